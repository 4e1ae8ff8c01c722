"""The peer: the `face_recognition` library (dlib HOG detector + dlib ResNet encoder).

Installed from PyPI as dlib-bin + face-recognition-models (the `bench` extra) and
face_recognition itself with --no-deps (its metadata asks for `dlib`, which
dlib-bin provides under another distribution name). Its weights ship inside
face-recognition-models: nothing is downloaded at run time.
"""
import concurrent.futures
import io
import os
import pathlib
import warnings

import numpy as np

from .progress import Progress

TOLERANCE = 0.6  # face_recognition.compare_faces' default: same person when distance <= 0.6
INSTALL_HINT = ("install the peer with `.venv/bin/pip install dlib-bin face-recognition-models "
                "'setuptools<82'` and `.venv/bin/pip install --no-deps face_recognition`")


def _library():
    with warnings.catch_warnings():
        # face_recognition_models locates its weights with pkg_resources, which warns.
        warnings.simplefilter("ignore")
        import face_recognition
    return face_recognition


def unavailable() -> str | None:
    """Why the peer cannot run here, or None when it can."""
    try:
        _library()
    except (ImportError, SystemExit) as exc:  # it calls quit() when its weights are missing
        return f"face_recognition is not usable ({exc or 'its models package is missing'}): " \
               f"{INSTALL_HINT}"
    return None


def encode(data: bytes) -> np.ndarray | None:
    """128-d encoding of the first face the HOG detector finds, or None (no face)."""
    fr = _library()
    found = fr.face_encodings(fr.load_image_file(io.BytesIO(data)))
    return found[0] if found else None


def distance(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Euclidean distance of two encodings; None when either image had no face."""
    if a is None or b is None:
        return None
    return float(np.linalg.norm(a - b))


def verify(data1: bytes, data2: bytes) -> bool:
    """What a face_recognition user gets for "same person?": compare_faces at its default."""
    d = distance(encode(data1), encode(data2))
    return d is not None and d <= TOLERANCE


def _encode_file(path: pathlib.Path) -> np.ndarray | None:
    return encode(pathlib.Path(path).read_bytes())


def encode_files(paths: list[pathlib.Path],
                 workers: int = 0) -> dict[pathlib.Path, np.ndarray | None]:
    """Encodings of many files on `workers` processes (dlib runs one core per image)."""
    paths = list(paths)
    progress = Progress("peer encodings", len(paths))
    out = {}
    with concurrent.futures.ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for path, enc in zip(paths, pool.map(_encode_file, paths, chunksize=8)):
            out[path] = enc
            progress.step()
    return out
