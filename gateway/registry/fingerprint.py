"""Which recognizer made an embedding: the fingerprint stored with every face.

Embeddings of two recognizers live in two spaces: a distance between them means nothing.
So each face keeps the fingerprint of the recognizer that made it, and a model whose
recognizer changed answers 409 instead of comparing across spaces.
"""
import hashlib
import pathlib
import threading

from face_contract.errors import Conflict
from gallery.configs import ModelConfig

from .openset import recognizer

_digests: dict[tuple, str] = {}  # (path, size, mtime): the weights' SHA-256, read once
_lock = threading.Lock()


def _sha256(path: pathlib.Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key not in _digests:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            _digests[key] = digest.hexdigest()
        return _digests[key]


def fingerprint(config: ModelConfig | None) -> str:
    """"sha256:<hex>" of the recognizer's weights where the gateway can read them, else
    "name:<recognizer>"; "" for a model without a config (an external backend), unchecked."""
    if config is None:
        return ""
    named = config.option("recognizer_onnx")
    if named:
        path = config.models_dir / named  # an absolute option stays absolute
        recorded = config.file_sha256.get(named)
        if recorded:
            return f"sha256:{recorded}"
        if path.is_file():
            return f"sha256:{_sha256(path)}"
    return f"name:{recognizer(config) or config.name}"


def check(found, current: str, model: str) -> None:
    """Conflict (409) when any of the fingerprints `found` (of `model`'s faces) is not
    `current`. Faces stored before fingerprints ("") and models without one pass."""
    other = sorted({f for f in found if f and f != current})
    if current and other:
        raise Conflict(
            f"the registry of model '{model}' holds faces made by another recognizer "
            f"({other[0][:23]}...) than the one the model loads now ({current[:23]}...): "
            "distances between the two would mean nothing. Put the old recognizer back under "
            "this model name (or install the new one under a new name), run `face-gateway "
            "reembed` where the faces kept their crops (--keep-crops), or forget those "
            "people and register them again")
