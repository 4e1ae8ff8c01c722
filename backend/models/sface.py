"""SFace recognizer through cv2.FaceRecognizerSF (the opencv engine): 128-d."""
import threading

import cv2
import numpy as np

from .arcface import l2_normalise
from .yunet import yunet_row


class SFace:
    taskname = "recognition"
    input_size = 112  # alignCrop's output side

    def __init__(self, path: str):
        self.path = path
        self.recognizer = cv2.FaceRecognizerSF.create(path, "")
        self._lock = threading.Lock()  # cv2.dnn nets are not safe to run concurrently
        with self._lock:
            probe = self.recognizer.feature(np.zeros((112, 112, 3), np.uint8))
        self.dim = int(probe.size)

    def prepare(self, **_):
        pass

    def crop(self, img: np.ndarray, face) -> np.ndarray:
        with self._lock:
            return self.recognizer.alignCrop(img, yunet_row(face))

    def embed_crops(self, crops) -> np.ndarray:
        return l2_normalise(self.embed_raw(crops))

    def embed_raw(self, crops) -> np.ndarray:
        """Features before normalisation (their norm feeds face quality)."""
        with self._lock:
            feats = [self.recognizer.feature(c).reshape(-1) for c in crops]
        return np.vstack(feats).astype(np.float32)
