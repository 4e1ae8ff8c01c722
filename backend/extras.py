"""The FaceExtras service (proto/face_extras.proto): answers beyond LocalAI's protocol, over
the engine that LocalAI's LoadModel loaded in the same process."""
import pathlib

import cv2
import numpy as np

from face_contract.errors import InvalidInput
from face_contract.images import check_limits
from face_contract.rpc import face_extras_pb2 as xpb
from face_contract.rpc import face_extras_pb2_grpc as xpb_grpc
from . import images
from .models import quality
from .models.arcface import l2_normalise
from .server import BackendServicer, face_rpc, still_wanted

MAX_ALIGNED_CROPS = 1000


def _png(crop: np.ndarray) -> bytes:
    return cv2.imencode(".png", crop)[1].tobytes()


def _aligned(data: bytes, side: int, index: int) -> np.ndarray:
    field = f"crops[{index}]"
    # The header is read before any pixel, so a crop can only ever be side x side pixels.
    if check_limits(data, field) != ("PNG", side, side):
        raise InvalidInput(f"{field} is not a {side}x{side} PNG aligned crop")
    return images.decode_bytes(data, field)


class FaceExtrasServicer(xpb_grpc.FaceExtrasServicer):
    def __init__(self, backend: BackendServicer):
        self.backend = backend  # holds the engine LoadModel built

    @property
    def engine(self):
        return self.backend.engine

    @property
    def face_slots(self):  # shared with the Backend service: one budget of worker threads
        return self.backend.face_slots

    @face_rpc
    def Faces(self, engine, request, context, started):
        img = images.decode(request.src, "src")
        still_wanted(context)
        faces = engine.faces(img, request.all_faces, request.threshold)
        crops = engine.crops(img, faces) if faces and (
            request.embeddings or request.aligned_crops or request.quality) else []
        raw = engine.recognizer.embed_raw(crops) if crops and (
            request.embeddings or request.quality) else None
        vectors = l2_normalise(raw) if raw is not None and request.embeddings else None
        reply = xpb.FacesReply(dim=engine.dim)
        recognizer = pathlib.Path(engine.recognizer.path).stem  # whose scale the norm is on
        for i, face in enumerate(faces):
            x1, y1, x2, y2 = (float(v) for v in face.box)
            item = reply.faces.add(x=x1, y=y1, w=x2 - x1, h=y2 - y1, score=face.score,
                                   landmarks=face.kps.reshape(-1).tolist())
            if vectors is not None:
                item.embedding.extend(vectors[i].tolist())
            if request.aligned_crops:
                item.aligned_crop = _png(crops[i])
            if request.quality:
                parts = quality.measure(face, img, crops[i], float(np.linalg.norm(raw[i])))
                item.quality.score = quality.score(parts, recognizer)
                item.quality.components.update(parts)
        return reply

    @face_rpc
    def EmbedAligned(self, engine, request, context, started):
        if len(request.crops) > MAX_ALIGNED_CROPS:
            raise InvalidInput(f"{len(request.crops)} crops: at most {MAX_ALIGNED_CROPS} a call")
        side = engine.recognizer.input_size
        crops = [_aligned(data, side, i) for i, data in enumerate(request.crops)]
        vectors = engine.recognizer.embed_crops(crops) if crops else np.zeros((0, engine.dim))
        return xpb.AlignedReply(dim=engine.dim, embeddings=[
            xpb.Embedding(values=v.tolist()) for v in vectors])
