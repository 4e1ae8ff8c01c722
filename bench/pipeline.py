"""The real pack's options, and the service's pipeline called in-process: the floor.

The floor runs the backend's own RPC handlers (decode, detect, embed, reply
building) and the gateway's own registry search, with no HTTP, no gRPC and no
second process: what the service adds on top of it is transport.
"""
import pathlib
import tempfile

import grpc
import numpy as np

from face_contract.rpc import backend_pb2 as pb
from face_contract.rpc import face_extras_pb2 as xpb
from backend.extras import FaceExtrasServicer
from backend.server import BackendServicer
from gateway.registry import LocalStore, Record

from .datasets import MODELS, b64

PACK_NAME = "mobilefacenet-pack"
DEFAULT_THRESHOLD = 0.74  # the pack's verify_threshold, calibrated on LFW


def real_pack_options() -> list[str]:
    """SCRFD-500M + MobileFaceNet + genderage + MiniFASNet from ../shared/models (absolute)."""
    return [
        "engine:insightface",
        f"detector_onnx:{MODELS / 'scrfd/det_500m.onnx'}",
        f"recognizer_onnx:{MODELS / 'recognizer-mobilefacenet-paddlex/MobileFaceNet.onnx'}",
        f"genderage_onnx:{MODELS / 'genderage/genderage.onnx'}",
        f"antispoof_v2_onnx:{MODELS / 'minifasnet/MiniFASNetV2.onnx'}",
        f"antispoof_v1se_onnx:{MODELS / 'minifasnet/MiniFASNetV1SE.onnx'}",
        f"verify_threshold:{DEFAULT_THRESHOLD}",
    ]


class PipelineError(Exception):
    def __init__(self, code, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code


class _Context:
    """What a handler needs of grpc.ServicerContext: abort() raises, as gRPC's does, and an
    in-process call is never cancelled (the backend checks is_active() between steps)."""

    def abort(self, code, details):
        raise PipelineError(code, details)

    def is_active(self) -> bool:
        return True

    def time_remaining(self) -> None:  # no deadline
        return None


class Pipeline:
    def __init__(self, threads: int = 0):
        """threads 0: the backend's own default (what the service runs with)."""
        self._servicer = BackendServicer()
        result = self._servicer.LoadModel(pb.ModelOptions(
            Model=PACK_NAME, Options=real_pack_options(), Threads=threads), _Context())
        if not result.success:
            raise SystemExit(f"in-process pipeline: {result.message}")
        self._extras = FaceExtrasServicer(self._servicer)
        self._tmp = tempfile.TemporaryDirectory(prefix="face-bench-floor-")
        self._store = LocalStore(pathlib.Path(self._tmp.name) / "floor.sqlite3")

    def close(self) -> None:
        self._store.close()
        self._tmp.cleanup()

    def verify(self, img1: str, img2: str) -> pb.FaceVerifyResponse:
        return self._servicer.FaceVerify(pb.FaceVerifyRequest(img1=img1, img2=img2), _Context())

    def embed(self, img: str) -> np.ndarray:
        reply = self._servicer.Embedding(pb.PredictOptions(Images=[img]), _Context())
        return np.asarray(reply.embeddings, np.float32)

    def embed_file(self, path: pathlib.Path) -> np.ndarray | None:
        """The embedding of a photo's primary face; None when it has no face."""
        try:
            return self.embed(b64(path))
        except PipelineError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise
            return None

    def faces(self, img: str) -> list[xpb.Face]:
        """Every face of the photo with its embedding, largest first (FaceExtras' Faces)."""
        return list(FaceExtrasServicer(self._servicer).Faces(xpb.FacesRequest(
            src=img, all_faces=True, embeddings=True), _Context()).faces)

    def register(self, img: str, name: str) -> None:
        self._store.add(Record.new(name, {}, PACK_NAME, self.embed(img)))

    def identify(self, img: str, top_k: int = 5) -> list[tuple[str, float]]:
        return [(rec.name, d) for rec, d in self._store.search(PACK_NAME, self.embed(img), top_k)]

    def analyze(self, img: str) -> pb.FaceAnalyzeResponse:
        return self._servicer.FaceAnalyze(pb.FaceAnalyzeRequest(img=img), _Context())

    def primary_face(self, img: str) -> xpb.Face | None:
        """The primary face with its embedding and quality (None: no face)."""
        reply = self._extras.Faces(xpb.FacesRequest(src=img, embeddings=True, quality=True),
                                   _Context())
        return reply.faces[0] if reply.faces else None
