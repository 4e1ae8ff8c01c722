"""ArcFace-style recognizer: 112x112 aligned RGB crop in, D-dim embedding out."""
import cv2
import numpy as np

from .align import norm_crop


def has_embedded_normalisation(graph_first_ops: list[str]) -> bool:
    """Some exports start with Sub/Mul nodes that normalise pixels inside the graph."""
    return "Sub" in graph_first_ops[:3] and "Mul" in graph_first_ops[:3]


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class ArcFace:
    taskname = "recognition"

    def __init__(self, path: str, session, embedded_normalisation: bool = False):
        self.path = path
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = int(inp.shape[2])
        self.output_name = session.get_outputs()[0].name
        self.dim = int(session.get_outputs()[0].shape[-1])
        self.mean, self.std = (0.0, 1.0) if embedded_normalisation else (127.5, 127.5)

    def prepare(self, **_):
        pass

    def crop(self, img: np.ndarray, face) -> np.ndarray:
        return norm_crop(img, face.kps, self.input_size)

    def embed_crops(self, crops) -> np.ndarray:
        """L2-normalised embeddings [N, D] of aligned crops."""
        return l2_normalise(self.embed_raw(crops))

    def embed_raw(self, crops) -> np.ndarray:
        """The recognizer's outputs [N, D] before normalisation: their norm tracks how
        recognisable a face is (face quality).

        One crop per run: on the CPU a batch of two took 1.5x as long as two single
        runs (MobileFaceNet, onnxruntime 1.32), so batching would only add latency.
        """
        size = (self.input_size, self.input_size)
        blob = cv2.dnn.blobFromImages(crops, 1.0 / self.std, size, (self.mean,) * 3, swapRB=True)
        out = [self.session.run([self.output_name], {self.input_name: b[None]})[0] for b in blob]
        return np.vstack(out).reshape(len(crops), -1).astype(np.float32)
