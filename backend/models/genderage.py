"""insightface genderage head: 96x96 box-centred crop in, gender logits and age out."""
import cv2
import numpy as np

from .face import Face

GENDER_KEYS = ("Woman", "Man")  # logit 0 = female, logit 1 = male


class GenderAge:
    taskname = "genderage"

    def __init__(self, path: str, session, embedded_normalisation: bool = True):
        self.path = path
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = int(inp.shape[2])
        self.output_name = session.get_outputs()[0].name
        self.mean, self.std = (0.0, 1.0) if embedded_normalisation else (127.5, 128.0)

    def prepare(self, **_):
        pass

    def _crop(self, img: np.ndarray, face: Face) -> np.ndarray:
        # The head was trained on crops 1.5x the larger box side, centred on the box. Where
        # that crop leaves the image, edge pixels are repeated: a black border is nothing the
        # head saw in training (on face-filling UTKFace crops, gender 72% -> 76%).
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        scale = self.input_size / (max(face.width, face.height) * 1.5)
        half = self.input_size / 2
        matrix = np.float32([[scale, 0, half - cx * scale], [0, scale, half - cy * scale]])
        return cv2.warpAffine(img, matrix, (self.input_size, self.input_size),
                              borderMode=cv2.BORDER_REPLICATE)

    def get(self, img: np.ndarray, faces: list[Face]):
        """Per face: ({"Woman": p, "Man": p}, age in years)."""
        crops = [self._crop(img, f) for f in faces]
        size = (self.input_size, self.input_size)
        blob = cv2.dnn.blobFromImages(crops, 1.0 / self.std, size, (self.mean,) * 3, swapRB=True)
        out = np.vstack([self.session.run([self.output_name], {self.input_name: b[None]})[0]
                         for b in blob])
        logits = out[:, :2] - out[:, :2].max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return [({k: float(p) for k, p in zip(GENDER_KEYS, row)}, float(age * 100))
                for row, age in zip(probs, out[:, 2])]
