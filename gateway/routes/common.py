"""What every route module shares: the router, the Gateway handle and number formatting."""
import dataclasses
import re

import numpy as np
from fastapi import APIRouter, Depends, Request

from face_contract.errors import InvalidInput, NoFace
from face_contract.rpc import backend_pb2 as pb
from face_contract.rpc import face_extras_pb2 as xpb

from .. import schemas as s
from ..fetch import UrlFetcher
from ..images import image_b64
from ..middleware.jsonbody import OffLoopJsonRoute
from ..middleware.metrics import Metrics
from ..pool.backends import Backends
from ..pool.members import BackendError
from ..registry import Stores


@dataclasses.dataclass
class Gateway:
    backends: Backends
    stores: Stores
    fetcher: UrlFetcher
    metrics: Metrics
    keep_crops: bool = False  # register stores each face's aligned crop (--keep-crops)

    async def call(self, model: str, method: str, request, large: dict | None = None,
                   **renamed: str):
        """A backend call whose error messages name the caller's fields, not the proto's:
        `no face found in img`, not `... in Images[0]` (renamed: proto name -> caller's).
        `large`: the image fields, see Backends.call."""
        try:
            return await self.backends.call(model, method, request, large)
        except BackendError as exc:
            message = str(exc)
            for proto, caller in renamed.items():
                message = re.sub(rf"(?<![\w.]){re.escape(proto)}(?![\w\[])", caller, message)
            raise BackendError(exc.grpc_code, message) from None

    async def embedding(self, model: str, img: str, field: str = "img") -> list[float]:
        image = await image_b64(img, field, self.fetcher)
        result = await self.call(model, "Embedding", pb.PredictOptions(),
                                 large={"Images": [image]}, **{"Images[0]": field})
        return list(result.embeddings)

    async def faces(self, model: str, image: str, field: str, **asked) -> xpb.FacesReply:
        """FaceExtras' Faces, each face with its quality, of an image already read (image_b64).
        asked: FacesRequest's other fields."""
        return await self.call(model, "Faces", xpb.FacesRequest(quality=True, **asked),
                               large={"src": image}, src=field)

    async def primary_face(self, model: str, img: str, field: str = "img",
                           aligned_crops: bool = False) -> xpb.Face:
        """The primary face of a photo, with its embedding and quality (and its aligned crop,
        which embeds as the photo does: FaceExtras' EmbedAligned), in one backend call."""
        reply = await self.faces(model, await image_b64(img, field, self.fetcher), field,
                                 embeddings=True, aligned_crops=aligned_crops)
        if not reply.faces:
            raise NoFace(f"no face found in {field}")
        return reply.faces[0]


async def gateway(request: Request) -> Gateway:
    # async: a plain def dependency is run on a worker thread, a hand-off on every request
    return request.app.state.gateway


async def single_valued_query(request: Request) -> None:
    """`?model=a&model=b` is refused, not read as one of the two."""
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidInput(f"query parameter {repeated[0]} is given more than once")


ERRORS = {code: {"model": s.ErrorResponse} for code in (400, 404, 408, 409, 412, 413, 500, 503)}
api = APIRouter(responses=ERRORS, route_class=OffLoopJsonRoute,
                dependencies=[Depends(single_valued_query)])
face = dict(response_model_exclude_none=True)


def _f(value: float) -> float:
    """A proto float32 as the shortest decimal that reads back as it (0.74, not 0.7400000095)."""
    return float(str(np.float32(value)))


def _scores(scores) -> dict[str, float] | None:
    return {key: _f(v) for key, v in scores.items()} or None


def _area(area: pb.FacialArea) -> s.FacialArea:
    return s.FacialArea(x=_f(area.x), y=_f(area.y), w=_f(area.w), h=_f(area.h))


