"""Face quality: measurements of one detected face and a unified 0-100 score made of them.

The score is a logistic model (coefficients in quality.json, fitted by bench/fit_quality.py
on labelled genuine pairs) of how likely the face is NOT to fail a genuine comparison at the
verify threshold: 100 is a face the recognizer handles well, 0 one it likely fails on.
"""
import functools
import json
import math
import pathlib

import cv2
import numpy as np

from .align import ARCFACE_TEMPLATE
from .face import Face

COEFFICIENTS = pathlib.Path(__file__).with_name("quality.json")
# Nose height between the eye line and the mouth line on a frontal face (the template's).
_FRONTAL_NOSE = float((ARCFACE_TEMPLATE[2, 1] - ARCFACE_TEMPLATE[:2, 1].mean())
                      / (ARCFACE_TEMPLATE[3:, 1].mean() - ARCFACE_TEMPLATE[:2, 1].mean()))
_DARK, _BRIGHT = 8, 247  # grey levels counted as clipped


def pose(kps: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch and roll in degrees, estimated from the five landmarks: roll from the eye
    line, yaw from the nose's sideways offset from the face's midline (in half inter-eye
    distances), pitch from the nose's height between the eye and mouth lines."""
    kps = np.asarray(kps, np.float64)
    dx, dy = kps[1] - kps[0]
    roll = math.degrees(math.atan2(dy, dx))
    c, s = math.cos(-math.radians(roll)), math.sin(-math.radians(roll))
    level = kps @ np.array([[c, s], [-s, c]])  # the eye line made horizontal
    eye_mid, mouth_mid = level[:2].mean(0), level[3:].mean(0)
    half_eyes = max(abs(level[1, 0] - level[0, 0]) / 2, 1e-6)
    midline = (eye_mid[0] + mouth_mid[0]) / 2
    yaw = math.degrees(math.asin(np.clip((level[2, 0] - midline) / half_eyes, -1, 1)))
    span = max(mouth_mid[1] - eye_mid[1], 1e-6)
    rise = (level[2, 1] - eye_mid[1]) / span - _FRONTAL_NOSE
    pitch = math.degrees(math.asin(np.clip(2 * rise, -1, 1)))
    return yaw, pitch, roll


def blockiness(img: np.ndarray, box) -> float:
    """JPEG blocking over the face box: the mean step between pixels across the 8x8 block
    grid (counted from the image's corner) over the mean step elsewhere. About 1.2 on a
    normal JPEG, above 3 at quality 5."""
    x1, y1 = (max(int(v), 0) for v in box[:2])
    x2, y2 = int(box[2]), int(box[3])
    grey = img[y1:y2, x1:x2]
    grey = (cv2.cvtColor(grey, cv2.COLOR_BGR2GRAY) if grey.ndim == 3 else grey).astype(np.float32)
    ratios = []
    for plane, start in ((grey, x1), (grey.T, y1)):
        steps = np.abs(np.diff(plane, axis=1)).mean(0)
        on_grid = (np.arange(len(steps)) + start + 1) % 8 == 0
        if on_grid.any() and (~on_grid).any():
            ratios.append(steps[on_grid].mean() / max(steps[~on_grid].mean(), 1e-6))
    return float(np.mean(ratios)) if ratios else 1.0


def measure(face: Face, img: np.ndarray, crop: np.ndarray, raw_norm: float) -> dict[str, float]:
    """The components of one face: from the image, its aligned crop (the recognizer's input)
    and the norm of the recognizer's raw embedding of it."""
    kps = np.asarray(face.kps, np.float64)
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    side = grey.shape[0]
    inner = grey[side // 5: side - side // 10, side // 5: side - side // 5]  # skin, no border
    yaw, pitch, roll = pose(kps)
    return {
        "inter_eye_px": float(np.linalg.norm(kps[1] - kps[0])),
        "yaw": yaw, "pitch": pitch, "roll": roll,
        "sharpness": float(cv2.Laplacian(inner, cv2.CV_64F).var()),
        "brightness": float(inner.mean()),
        "clipped": float(((inner <= _DARK) | (inner >= _BRIGHT)).mean()),
        "blockiness": blockiness(img, face.box),
        "detector_score": float(face.score),
        "embedding_norm": float(raw_norm),
    }


def features(components: dict[str, float]) -> np.ndarray:
    """What the logistic model reads: logs where a quantity works by ratios, absolute angles,
    distance from mid-grey."""
    c = components
    return np.array([
        math.log(max(c["inter_eye_px"], 1.0)),
        abs(c["yaw"]) / 90, abs(c["pitch"]) / 90,
        math.log1p(max(c["sharpness"], 0.0)),
        abs(c["brightness"] - 128) / 128, c["clipped"], math.log(max(c["blockiness"], 0.1)),
        c["detector_score"], c["embedding_norm"],
    ])


NORM_FEATURE = 8  # where embedding_norm sits in features()


@functools.cache
def _model(path: pathlib.Path = COEFFICIENTS) -> tuple[np.ndarray, np.ndarray, np.ndarray, float,
                                                       str]:
    fitted = json.loads(path.read_text())
    return (np.asarray(fitted["mean"]), np.asarray(fitted["scale"]),
            np.asarray(fitted["weights"]), float(fitted["bias"]), fitted["recognizer"])


def score(components: dict[str, float], recognizer: str) -> float:
    """0-100: the fitted probability that the face does not fail a genuine comparison.

    recognizer: the weights' file stem. An embedding's norm is on its own network's scale, so
    for a recognizer other than the one the score was fitted with it counts as typical."""
    mean, scale, weights, bias, fitted_on = _model()
    x = features(components)
    if recognizer != fitted_on:
        x[NORM_FEATURE] = mean[NORM_FEATURE]
    z = float((x - mean) / scale @ weights + bias)  # logit of failure
    return 100.0 / (1.0 + math.exp(min(z, 50.0)))
