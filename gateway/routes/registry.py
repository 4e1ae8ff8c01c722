"""The registry routes: register, identify, forget and the listing (people: people.py)."""
import asyncio
import uuid

import numpy as np
from fastapi import Depends, Query, Response

from face_contract.errors import NotFound
from face_contract.similarity import confidence

from .. import schemas as s
from ..middleware.multipart import form_schema
from ..quality import gate_of
from ..registry import Filters, PersonFilters, Record, fingerprint, openset, persons, require
from .common import Gateway, _f, api, face, gateway
from .groups import identify_all_faces
from .quality import assessed, refuse_below, refuse_below_gate


@api.post("/v1/face/register", response_model=s.RegisterResponse,
          openapi_extra=form_schema(s.RegisterRequest), **face)
async def register(body: s.RegisterRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    store = require(gw.stores, body.store)
    photos = body.photos()
    found = await asyncio.gather(*(gw.primary_face(model, img, field, gw.keep_crops)
                                   for field, img in photos))
    gate = gate_of(gw.backends.config(model), body.quality_gate)
    qualities = [assessed(f.quality, gate) for f in found]
    for (field, _), quality in zip(photos, qualities):  # before anything is stored
        refuse_below_gate(quality, field, gate)
    vectors = [list(f.embedding) for f in found]
    crops = [f.aligned_crop if gw.keep_crops else None for f in found]
    if body.template:  # Record.new normalises the mean of the unit vectors again
        # No one crop rebuilds a mean of several photos: a template keeps none.
        vectors, crops = [np.mean(np.asarray(vectors, dtype=np.float32), axis=0)], [None]
    person_id = body.person_id or str(uuid.uuid4())  # every photo of a request: one person
    recognizer = await asyncio.to_thread(fingerprint.fingerprint, gw.backends.config(model))
    records = [Record.new(body.name or "", body.labels or {}, model, v, person_id, recognizer,
                          crop) for v, crop in zip(vectors, crops)]
    fingerprint.check(await asyncio.to_thread(store.recognizers, model), recognizer, model)
    # One transaction: a set is stored whole or not at all. With person_id the faces take
    # the person's name.
    await asyncio.to_thread(store.add_set, records, body.person_id is not None)
    first = records[0]
    return s.RegisterResponse(id=first.id, name=first.name, registered_at=first.registered_at,
                              person_id=person_id,
                              ids=[r.id for r in records] if body.imgs is not None else None,
                              quality=qualities)


@api.post("/v1/face/identify", response_model=s.IdentifyResponse,
          openapi_extra=form_schema(s.IdentifyRequest), **face)
async def identify(body: s.IdentifyRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    store = require(gw.stores, body.store)
    decision = await asyncio.to_thread(  # open-set decisions count people, not photos
        openset.decide, gw.backends.config(model), model, body.threshold,
        body.match_policy, body.fpir, lambda: store.count_persons(PersonFilters(model=model)))
    if body.all_faces:
        return await identify_all_faces(body, gw, model, store, decision)
    probe = await gw.primary_face(model, body.img)
    quality = assessed(probe.quality, gate_of(gw.backends.config(model), None))
    refuse_below(quality, "img", body.min_quality)
    vector = list(probe.embedding)
    threshold = decision.threshold
    recognizer = await asyncio.to_thread(fingerprint.fingerprint, gw.backends.config(model))

    def match(record: Record, distance: float, faces: int | None = None) -> s.IdentifyMatch:
        distance = _f(distance)  # the float32 the store computed, shown as such
        return s.IdentifyMatch(
            id=record.id, name=record.name, labels=record.labels, distance=distance,
            confidence=confidence(distance, threshold), match=distance <= threshold,
            person_id=record.person_id, faces=faces)

    if body.group_by == "person":
        found = await asyncio.to_thread(persons.nearest_persons, store, model, vector, body.top_k)
        rows = [(m.nearest, m.distance, m.faces) for m in found]
    elif body.group_by == "name":
        nearest = await asyncio.to_thread(persons.nearest_by, store, model, vector, body.top_k,
                                          lambda record: record.name)
        rows = [(record, distance, None) for record, distance in nearest]
    else:
        nearest = await asyncio.to_thread(store.search, model, vector, body.top_k)
        rows = [(record, distance, None) for record, distance in nearest]
    # Register never mixes recognizers in a model, so the rows found speak for the model.
    fingerprint.check([record.recognizer for record, _, _ in rows], recognizer, model)
    matches = [match(*row) for row in rows]
    return s.IdentifyResponse(
        matches=matches, threshold=_f(threshold), match_policy=decision.policy,
        threshold_source=decision.source, fpir=decision.fpir, gallery_size=decision.gallery_size,
        quality=quality)


@api.post("/v1/face/forget", status_code=204, response_class=Response)
async def forget(body: s.ForgetRequest, gw: Gateway = Depends(gateway)):
    store = require(gw.stores, body.store)
    if not await asyncio.to_thread(store.delete, body.id):
        raise NotFound(f"no registered face has id '{body.id}'")
    return Response(status_code=204)


@api.get("/v1/face/registry", response_model=s.RegistryResponse, **face)
async def registry(model: str | None = Query(None, max_length=s.MAX_ID,
                                             examples=["insightface-opencv"]),
                   store: str | None = Query(None, max_length=s.MAX_ID, examples=["local-store"]),
                   name: str | None = Query(None, max_length=s.MAX_NAME, examples=["Ann Lee"]),
                   limit: int = Query(100, ge=1, le=s.MAX_LIST_LIMIT, examples=[10]),
                   offset: int = Query(0, ge=0, le=s.MAX_LIST_OFFSET, examples=[0]),
                   gw: Gateway = Depends(gateway)):
    chosen = require(gw.stores, store)
    filters = Filters(model=model, name=name)
    records = await asyncio.to_thread(chosen.list, filters, limit, offset)
    return s.RegistryResponse(
        total=await asyncio.to_thread(chosen.count, filters),
        people=await asyncio.to_thread(chosen.count_persons, PersonFilters(model=model, name=name)),
        items=[s.RegistryItem(id=r.id, person_id=r.person_id, name=r.name, labels=r.labels,
                              model=r.model, registered_at=r.registered_at) for r in records])


