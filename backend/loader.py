"""LoadModel: ModelOptions (Model, ModelPath, `key:value` Options) -> FaceEngine."""
import contextlib
import logging
import os
import pathlib

import cv2
import numpy as np

from . import images
from .engine import FaceEngine
from face_contract.errors import ModelLoadError
from face_contract.quality import DEFAULT_GATE, GATE_LEVELS
from .models import ArcFace, GenderAge, MiniFASNet, SCRFD, get_model
from .models.face import Face
from .models.minifasnet import LivenessEnsemble
from .models.sface import SFace
from .models.session import IN_FLIGHT, SessionFactory
from .models.yunet import YuNet

log = logging.getLogger(__name__)

OPENCV_ENGINES = ("onnx_direct", "opencv")
# Cosine-distance thresholds published for the known recognizers, by file stem.
RECOGNIZER_THRESHOLDS = {"w600k_r50": 0.35, "glintr100": 0.35, "w600k_mbf": 0.40}
SFACE_THRESHOLD = 0.50
FALLBACK_THRESHOLD = 0.35
LIVENESS_SCALES = {"antispoof_v2_onnx": 2.7, "antispoof_v1se_onnx": 4.0}
TRUE_WORDS = ("1", "true", "yes", "on")


def parse_options(items) -> dict[str, str]:
    """`key:value` strings, split on the first colon (values may hold colons)."""
    options = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ModelLoadError(f"option {item!r} is not of the form key:value")
        options[key.strip()] = value.strip()
    return options


def _number(options, key, default, kind=float):
    try:
        return kind(options.get(key, default))
    except ValueError:
        raise ModelLoadError(f"option {key}:{options[key]} is not a number") from None


def _det_size(options, default: int) -> tuple[int, int]:
    text = options.get("det_size", str(default)).lower()
    try:
        w, _, h = text.partition("x")
        size = (int(w), int(h or w))
    except ValueError:
        raise ModelLoadError(f"option det_size:{text} must be like 640 or 640x640") from None
    if min(size) < 32 or max(size) > 4096:
        raise ModelLoadError(f"option det_size:{text} must be between 32 and 4096")
    return size


class _Resolver:
    def __init__(self, model_path: str, options: dict):
        self.base = pathlib.Path(model_path or ".")
        self.options = options

    def file(self, key: str) -> str:
        path = pathlib.Path(self.options[key])
        if not path.is_absolute():
            path = self.base / path
        if not path.is_file():
            raise ModelLoadError(f"option {key}: file not found: {path}")
        return str(path)

    def pack_dir(self, pack: str) -> pathlib.Path:
        folder = self.base / pack
        if (folder / pack).is_dir() and not any(folder.glob("*.onnx")):
            folder = folder / pack  # zips that unpack into a folder of the pack's name
        if not folder.is_dir():
            raise ModelLoadError(f"option model_pack:{pack}: no pack folder at {self.base / pack}")
        return folder


def _expect(model, cls, key, path):
    if not isinstance(model, cls):
        kind = getattr(model, "taskname", "landmark head")
        raise ModelLoadError(f"option {key}: {path} is a {kind} model, not a {cls.taskname} model")
    return model


def _insightface_models(resolve: _Resolver, options: dict, sessions):
    """(detector, recognizer, genderage, recognizer file stem) of a pack or a custom set."""
    if "detector_onnx" in options or "recognizer_onnx" in options:
        for key in ("detector_onnx", "recognizer_onnx"):
            if key not in options:
                raise ModelLoadError(f"a custom pack needs both detector_onnx and recognizer_onnx; "
                                     f"{key} is missing")
        det_path, rec_path = resolve.file("detector_onnx"), resolve.file("recognizer_onnx")
        detector = _expect(get_model(det_path, sessions), SCRFD, "detector_onnx", det_path)
        recognizer = _expect(get_model(rec_path, sessions), ArcFace, "recognizer_onnx", rec_path)
        genderage = None
        if options.get("genderage_onnx"):
            ga_path = resolve.file("genderage_onnx")
            genderage = _expect(get_model(ga_path, sessions), GenderAge, "genderage_onnx", ga_path)
        return detector, recognizer, genderage, pathlib.Path(rec_path).stem
    pack = options.get("model_pack", "buffalo_l")
    found = {}
    for path in sorted(resolve.pack_dir(pack).glob("*.onnx")):
        model = get_model(str(path), sessions)
        if model is not None and not isinstance(model, MiniFASNet):
            found.setdefault(model.taskname, model)
    for needed in ("detection", "recognition"):
        if needed not in found:
            raise ModelLoadError(f"model_pack:{pack} has no {needed} model in {resolve.pack_dir(pack)}")
    return (found["detection"], found["recognition"], found.get("genderage"),
            pathlib.Path(found["recognition"].path).stem)


def _opencv_models(resolve: _Resolver, options: dict, det_size):
    for key in ("detector_onnx", "recognizer_onnx"):
        if key not in options:
            raise ModelLoadError(f"engine:{options['engine']} needs option {key}")
    try:
        detector = YuNet(resolve.file("detector_onnx"), det_size)
    except cv2.error as exc:
        raise ModelLoadError(f"option detector_onnx: {options['detector_onnx']} is not a YuNet "
                             f"model cv2.FaceDetectorYN can load ({str(exc).strip()[:200]})") from None
    try:
        recognizer = SFace(resolve.file("recognizer_onnx"))
    except cv2.error as exc:
        raise ModelLoadError(f"option recognizer_onnx: {options['recognizer_onnx']} is not an SFace "
                             f"model cv2.FaceRecognizerSF can load ({str(exc).strip()[:200]})") from None
    return detector, recognizer


def _liveness(resolve: _Resolver, options: dict, sessions):
    given = [k for k in LIVENESS_SCALES if options.get(k)]
    if not given:
        return None
    if len(given) == 1:
        missing = next(k for k in LIVENESS_SCALES if k not in given)
        raise ModelLoadError(f"liveness needs both MiniFASNet files: {missing} is missing")
    models = []
    for key, scale in LIVENESS_SCALES.items():
        path = resolve.file(key)
        models.append(_expect(get_model(path, sessions, crop_scale=scale), MiniFASNet, key, path))
    threshold = _number(options, "antispoof_threshold", 0.5)
    return LivenessEnsemble(models, threshold)


def _default_threshold(engine: str, recognizer_stem: str) -> float:
    if engine in OPENCV_ENGINES:
        return SFACE_THRESHOLD
    if recognizer_stem in RECOGNIZER_THRESHOLDS:
        return RECOGNIZER_THRESHOLDS[recognizer_stem]
    log.warning("recognizer %s has no known verification threshold: using %.2f; set "
                "verify_threshold in the model config", recognizer_stem, FALLBACK_THRESHOLD)
    return FALLBACK_THRESHOLD


def check_identify_options(options: dict) -> None:
    """identify_threshold, match_policy and fpir are the gateway's (identify runs there), but a
    config is loaded here first: a malformed one fails LoadModel instead of every identify."""
    if "identify_threshold" in options and not _number(options, "identify_threshold", 0) > 0:
        raise ModelLoadError(f"option identify_threshold:{options['identify_threshold']} must be "
                             f"a cosine distance above 0")
    if options.get("match_policy", "threshold") not in ("threshold", "fpir"):
        raise ModelLoadError(f"option match_policy:{options['match_policy']} is unknown: use "
                             f"threshold or fpir")
    if "fpir" in options and not 0 < _number(options, "fpir", 0) < 1:
        raise ModelLoadError(f"option fpir:{options['fpir']} must be a rate between 0 and 1")
    if options.get("quality_gate", DEFAULT_GATE) not in GATE_LEVELS:  # the gateway's too
        raise ModelLoadError(f"option quality_gate:{options['quality_gate']} is unknown: use "
                             f"one of {', '.join(GATE_LEVELS)}")


def warm_up(engine: FaceEngine) -> None:
    """Every model and the image decoder once, so the first request is not the slow one.

    Twice: once as a lone request and once as if others overlapped it, which
    warms both sessions of each model (see AdaptiveSession).
    """
    ok, jpeg = cv2.imencode(".jpg", np.full((256, 256, 3), 127, np.uint8))
    img = images.decode_bytes(jpeg.tobytes(), "warm-up image")
    big = np.full((900, 900, 3), 127, np.uint8)
    kps = np.array([[90, 110], [166, 110], [128, 145], [97, 185], [159, 185]], np.float32)
    face = Face(np.array([48, 48, 208, 208], np.float32), 1.0, kps)
    for overlapping in (False, True):
        with contextlib.ExitStack() as gauge:
            if overlapping:
                gauge.enter_context(IN_FLIGHT)
                gauge.enter_context(IN_FLIGHT)
            engine.detector.detect(img, 0.99)
            engine.recognizer.embed_crops([engine.recognizer.crop(img, face)])
            if engine.genderage is not None:
                engine.genderage.get(img, [face])
            if engine.liveness is not None:
                engine.liveness.check(big, Face(face.box + 320, 1.0, kps + 320))


def build_engine(name: str, model_path: str, option_items, cuda: bool = False,
                 threads: int = 0) -> FaceEngine:
    options = parse_options(option_items)
    check_identify_options(options)
    engine_kind = options.setdefault("engine", "insightface")
    resolve = _Resolver(model_path, options)
    use_cuda = cuda or options.get("cuda", "").lower() in TRUE_WORDS
    sessions = SessionFactory(use_cuda=use_cuda, threads=threads or _default_threads())
    det_thresh = _number(options, "det_thresh", 0.5)
    if engine_kind in OPENCV_ENGINES:
        detector, recognizer = _opencv_models(resolve, options, _det_size(options, 320))
        genderage, stem = None, "sface"
    elif engine_kind == "insightface":
        detector, recognizer, genderage, stem = _insightface_models(resolve, options, sessions)
        detector.prepare(det_size=_det_size(options, 640))
    else:
        raise ModelLoadError(f"option engine:{engine_kind} is unknown: use insightface, "
                             f"onnx_direct or opencv")
    if "verify_threshold" in options:
        verify_threshold = _number(options, "verify_threshold", 0)
    else:
        verify_threshold = _default_threshold(engine_kind, stem)
    engine = FaceEngine(name, detector, recognizer, genderage, _liveness(resolve, options, sessions),
                        det_thresh=det_thresh, verify_threshold=verify_threshold)
    warm_up(engine)
    log.info("loaded %s: engine %s, %d-d embeddings, threshold %.3f, genderage %s, liveness %s",
             name, engine_kind, engine.dim, verify_threshold, genderage is not None,
             engine.liveness is not None)
    return engine


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))
