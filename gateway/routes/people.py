"""The people routes: list, show, rename or relabel, forget, merge and move a face (a split)."""
import asyncio

from fastapi import Depends, Path, Query, Response

from .. import schemas as s
from ..registry import Person, PersonFilters, require
from ..registry.base import unknown_person
from .common import Gateway, api, face, gateway

PersonId = Path(max_length=s.MAX_ID, examples=["5f0c6f1e-9b8d-4c43-a1e2-b7d9c0a4f6e1"])
StoreQuery = Query(None, max_length=s.MAX_ID, examples=["local-store"])


def _person(person: Person) -> s.Person:
    return s.Person(person_id=person.person_id, name=person.name, labels=person.labels,
                    model=person.model, created_at=person.created_at, faces=person.face_count)


@api.get("/v1/face/people", response_model=s.PeopleResponse, **face)
async def people(model: str | None = Query(None, max_length=s.MAX_ID,
                                           examples=["insightface-opencv"]),
                 store: str | None = StoreQuery,
                 name: str | None = Query(None, max_length=s.MAX_NAME, examples=["Ann"],
                                          description="names that start with this (case "
                                                      "matters)"),
                 limit: int = Query(100, ge=1, le=s.MAX_LIST_LIMIT, examples=[10]),
                 offset: int = Query(0, ge=0, le=s.MAX_LIST_OFFSET, examples=[0]),
                 gw: Gateway = Depends(gateway)):
    chosen = require(gw.stores, store)
    filters = PersonFilters(model=model, name_prefix=name)
    found = await asyncio.to_thread(chosen.list_persons, filters, limit, offset)
    return s.PeopleResponse(items=[_person(p) for p in found],
                            total=await asyncio.to_thread(chosen.count_persons, filters))


@api.get("/v1/face/people/{person_id}", response_model=s.PersonDetail, **face)
async def person(person_id: str = PersonId, store: str | None = StoreQuery,
                 gw: Gateway = Depends(gateway)):
    found = await asyncio.to_thread(require(gw.stores, store).get_person, person_id)
    if found is None:
        raise unknown_person(person_id)
    return s.PersonDetail(**_person(found).model_dump(), records=[
        s.PersonFace(id=f.id, labels=f.labels, registered_at=f.registered_at)
        for f in found.faces])


@api.patch("/v1/face/people/{person_id}", response_model=s.Person, **face)
async def update_person(body: s.PersonPatch, person_id: str = PersonId,
                        store: str | None = StoreQuery, gw: Gateway = Depends(gateway)):
    found = await asyncio.to_thread(require(gw.stores, store).update_person, person_id,
                                    body.name, body.labels)
    if found is None:
        raise unknown_person(person_id)
    return _person(found)


@api.delete("/v1/face/people/{person_id}", status_code=204, response_class=Response)
async def forget_person(person_id: str = PersonId, store: str | None = StoreQuery,
                        gw: Gateway = Depends(gateway)):
    if not await asyncio.to_thread(require(gw.stores, store).delete_person, person_id):
        raise unknown_person(person_id)
    return Response(status_code=204)


@api.post("/v1/face/people/merge", response_model=s.Person, **face)
async def merge(body: s.MergeRequest, gw: Gateway = Depends(gateway)):
    store = require(gw.stores, body.store)
    return _person(await asyncio.to_thread(store.merge_persons, body.into, body.from_))


@api.post("/v1/face/people/move", response_model=s.Person, **face)
async def move(body: s.MoveRequest, gw: Gateway = Depends(gateway)):
    """Moves one face to another person, or (no person_id) to a new person of its own."""
    store = require(gw.stores, body.store)
    return _person(await asyncio.to_thread(store.move_face, body.face_id, body.person_id))
