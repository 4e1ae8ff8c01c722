"""Templates rebuilt from kept crops when the recognizer behind a model changed (reembed).

It runs inside the gateway: the gateway holds the store (a local store admits one process)
and the backends that load the new recognizer, and every store is rebuilt the same way,
while the gateway serves. A call rebuilds one batch; `face-gateway reembed` calls it until
none is left and shows the progress.
"""
import asyncio

from fastapi import Depends

from face_contract.errors import InvalidInput, NotReady
from face_contract.rpc import face_extras_pb2 as xpb

from .. import schemas as s
from ..registry import fingerprint, require
from ..registry.base import unit_query
from .common import Gateway, api, gateway


@api.post("/v1/face/reembed", response_model=s.ReembedResponse)
async def reembed(body: s.ReembedRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    store = require(gw.stores, body.store)
    recognizer = await asyncio.to_thread(fingerprint.fingerprint, gw.backends.config(model))
    if not recognizer:
        raise InvalidInput(f"model '{model}' runs on an external backend without a config: "
                           "its recognizer is unknown, so no template can be called stale")
    stale = await asyncio.to_thread(store.stale_faces, model, recognizer, body.limit)
    written = 0
    if stale:
        reply = await gw.call(model, "EmbedAligned",
                              xpb.AlignedRequest(crops=[face.crop for face in stale]))
        vectors = [unit_query(e.values) for e in reply.embeddings]
        for face, vector in zip(stale, vectors):
            if vector.size != face.dimension:
                raise NotReady(
                    f"model '{model}' now makes {vector.size}-d embeddings and its registry "
                    f"holds {face.dimension}-d ones: reembed rebuilds templates of one size "
                    "only. Install the new recognizer under a new model name and register "
                    "the people there")
        written = await asyncio.to_thread(store.replace_embeddings, model,
                                          list(zip(stale, vectors)), recognizer)
    kept, without = await asyncio.to_thread(store.stale_counts, model, recognizer)
    return s.ReembedResponse(model=model, store=body.store or gw.stores.default,
                             recognizer=recognizer,
                             reembedded=written, remaining=kept, without_crop=len(without),
                             without_crop_ids=without[:s.MAX_LIST_LIMIT])
