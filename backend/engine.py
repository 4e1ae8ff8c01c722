"""The face pipeline: detector + recognizer (+ genderage head, + liveness ensemble)."""
import dataclasses

import numpy as np

from face_contract.actions import KNOWN_ACTIONS, SUPPORTED_ACTIONS
from face_contract.errors import InvalidInput, NoFace, NotReady
from .models.face import Face, by_area, clip_to_image
from .models.minifasnet import is_greyscale


@dataclasses.dataclass
class FaceAttributes:
    face: Face
    age: float | None = None
    gender: dict | None = None
    is_real: bool | None = None
    antispoof_score: float | None = None


class FaceEngine:
    def __init__(self, name, detector, recognizer, genderage=None, liveness=None,
                 det_thresh=0.5, verify_threshold=0.35):
        self.name = name
        self.detector = detector
        self.recognizer = recognizer
        self.genderage = genderage
        self.liveness = liveness
        self.det_thresh = det_thresh
        self.verify_threshold = verify_threshold

    @property
    def dim(self) -> int:
        return self.recognizer.dim

    def detect(self, img: np.ndarray, threshold: float = 0.0) -> list[Face]:
        """Every face at or above the threshold (det_thresh when 0), largest first."""
        floor = threshold if threshold > 0 else self.det_thresh
        return by_area(clip_to_image(self.detector.detect(img, floor), img.shape))

    def primary_face(self, img: np.ndarray, field: str = "image") -> Face:
        faces = self.detect(img)
        if not faces:
            raise NoFace(f"no face found in {field}")
        return faces[0]

    def embed(self, images: list[np.ndarray], fields: list[str]) -> tuple[list[Face], np.ndarray]:
        """Primary face of each image and their embeddings, in one recognizer batch."""
        faces = [self.primary_face(img, field) for img, field in zip(images, fields)]
        crops = [self.recognizer.crop(img, face) for img, face in zip(images, faces)]
        return faces, self.recognizer.embed_crops(crops)

    def faces(self, img: np.ndarray, all_faces: bool, threshold: float = 0.0) -> list[Face]:
        """Every face (largest first) or only the primary one; no face is an empty list."""
        faces = self.detect(img, threshold)
        return faces if all_faces else faces[:1]

    def crops(self, img: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        """Each face aligned as the recognizer sees it."""
        return [self.recognizer.crop(img, face) for face in faces]

    def liveness_ready(self, img: np.ndarray, field: str, face: Face | None = None) -> None:
        """Liveness can judge this image: its weights are loaded and the image (the face, when
        given) has colour. Without a face it refuses a grey image before any face work."""
        if self.liveness is None:
            raise NotReady("anti_spoofing needs the MiniFASNet weights: load the model with "
                           "antispoof_v2_onnx:<MiniFASNetV2.onnx> and "
                           "antispoof_v1se_onnx:<MiniFASNetV1SE.onnx>")
        if is_greyscale(img, face):
            what = field if face is None else f"the face in {field}"
            raise InvalidInput(f"liveness needs a colour image: {what} is greyscale, and on "
                               "greyscale every real face would score as a spoof")

    def check_liveness(self, img: np.ndarray, face: Face, field: str) -> tuple[bool, float]:
        self.liveness_ready(img, field, face)
        try:
            return self.liveness.check(img, face)
        except InvalidInput as exc:  # a crop too tight: say which image
            raise InvalidInput(f"{field}: {exc}") from None

    def analyze(self, img: np.ndarray, actions: list[str], anti_spoofing: bool) -> list[FaceAttributes]:
        unknown = [a for a in actions if a not in KNOWN_ACTIONS]
        if unknown:
            raise InvalidInput(f"unknown actions {unknown}: use any of {list(KNOWN_ACTIONS)}")
        if anti_spoofing:  # refused up front, even when no face is found
            self.liveness_ready(img, "img")
        wanted = set(actions or SUPPORTED_ACTIONS)
        results = [FaceAttributes(face) for face in self.detect(img)]
        if self.genderage is not None and results and wanted & {"age", "gender"}:
            for res, (gender, age) in zip(results, self.genderage.get(img, [r.face for r in results])):
                res.age = age if "age" in wanted else None
                res.gender = gender if "gender" in wanted else None
        if anti_spoofing:
            for res in results:
                res.is_real, res.antispoof_score = self.check_liveness(img, res.face, "img")
        return results

