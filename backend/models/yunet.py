"""YuNet face detector through cv2.FaceDetectorYN (the opencv engine)."""
import threading

import cv2
import numpy as np

from .face import MAX_NMS_CANDIDATES, Face

NMS_IOU = 0.3


def yunet_row(face: Face) -> np.ndarray:
    """The 15-float row cv2's face API expects: x, y, w, h, 5 landmarks, score."""
    x1, y1, x2, y2 = face.box
    return np.hstack([[x1, y1, x2 - x1, y2 - y1], face.kps.reshape(-1), [face.score]]).astype(np.float32)


class YuNet:
    taskname = "detection"

    def __init__(self, path: str, det_size=(320, 320)):
        self.path = path
        self.input_size = tuple(det_size)
        self.detector = cv2.FaceDetectorYN.create(path, "", self.input_size, 0.5, NMS_IOU,
                                                   MAX_NMS_CANDIDATES)  # top_k before NMS
        self._lock = threading.Lock()  # the detector object holds per-call state
        self.detect(np.zeros((64, 64, 3), np.uint8), 0.9)  # a wrong model fails here, at load

    def prepare(self, det_size=(320, 320), **_):
        self.input_size = tuple(det_size)

    def detect(self, img: np.ndarray, threshold: float) -> list[Face]:
        h, w = img.shape[:2]
        cw, ch = self.input_size
        scale = min(1.0, cw / w, ch / h)  # shrink big images, never enlarge small ones
        if scale < 1.0:
            img = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))),
                             interpolation=cv2.INTER_AREA)
        with self._lock:
            self.detector.setInputSize((img.shape[1], img.shape[0]))
            self.detector.setScoreThreshold(float(threshold))
            _, rows = self.detector.detect(img)
        if rows is None:
            return []
        faces = []
        for row in rows / np.float32(scale):
            row[14] *= scale  # the score is no coordinate
            box = np.array([row[0], row[1], row[0] + row[2], row[1] + row[3]], np.float32)
            faces.append(Face(box, float(row[14]), row[4:14].reshape(5, 2).astype(np.float32)))
        return faces
