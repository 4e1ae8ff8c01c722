"""Group photos: every face of a photo identified at once, and faces clustered into people."""
import asyncio

from fastapi import Depends
from fastapi.responses import JSONResponse

from face_contract.rpc import face_extras_pb2 as xpb
from face_contract.similarity import confidence

from .. import schemas as s
from ..images import image_b64
from ..middleware.multipart import form_schema
from ..registry import assignment, clustering, fingerprint
from ..registry.openset import Decision
from .common import Gateway, _f, api, gateway


async def every_face(gw: Gateway, model: str, img: str, field: str) -> list:
    """Each face of the photo (largest first) with its embedding: FaceExtras' Faces RPC."""
    image = await image_b64(img, field, gw.fetcher)
    reply = await gw.call(model, "Faces", xpb.FacesRequest(all_faces=True, embeddings=True),
                          large={"src": image}, src=field)
    return list(reply.faces)


def _area(face) -> s.FacialArea:
    return s.FacialArea(x=_f(face.x), y=_f(face.y), w=_f(face.w), h=_f(face.h))


def _match(m, threshold: float) -> s.IdentifyMatch:
    distance = _f(m.distance)
    return s.IdentifyMatch(id=m.nearest.id, name=m.nearest.name, labels=m.nearest.labels,
                           distance=distance, confidence=confidence(distance, threshold),
                           match=distance <= threshold, person_id=m.person_id, faces=m.faces)


def _identified(face, answer: assignment.FaceAnswer, threshold: float) -> s.IdentifiedFace:
    person, distance = answer.person, answer.distance
    distance = None if distance is None else _f(distance)
    return s.IdentifiedFace(
        facial_area=_area(face), person_id=person.person_id if person else None,
        name=person.nearest.name if person else None, distance=distance,
        confidence=None if distance is None else confidence(distance, threshold),
        match=person is not None, matches=[_match(m, threshold) for m in answer.candidates])


async def identify_all_faces(body: s.IdentifyRequest, gw: Gateway, model: str, store,
                             decision: Decision) -> JSONResponse:
    """identify with all_faces: one entry per face, each person given to one face at most."""
    faces = await every_face(gw, model, body.img, "img")
    threshold = decision.threshold
    answers = await asyncio.to_thread(assignment.identify_faces, store, model,
                                      [list(f.embedding) for f in faces], body.top_k, threshold)
    recognizer = await asyncio.to_thread(fingerprint.fingerprint, gw.backends.config(model))
    fingerprint.check([m.nearest.recognizer for a in answers for m in a.candidates],
                      recognizer, model)
    shown = [_identified(face, answer, threshold) for face, answer in zip(faces, answers)]
    response = s.IdentifyResponse(
        matches=shown[0].matches if shown else [], threshold=_f(threshold),
        match_policy=decision.policy, threshold_source=decision.source, fpir=decision.fpir,
        gallery_size=decision.gallery_size)
    return JSONResponse({**response.model_dump(exclude_none=True),
                         "faces": [face.shown() for face in shown]})


@api.post("/v1/face/cluster", response_model=s.ClusterResponse,
          openapi_extra=form_schema(s.ClusterRequest), response_model_exclude_none=True)
async def cluster(body: s.ClusterRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    per_photo = await asyncio.gather(*(every_face(gw, model, img, f"imgs[{i}]")
                                       for i, img in enumerate(body.imgs)))
    faces = [s.ClusterFace(img=i, facial_area=_area(face))
             for i, found in enumerate(per_photo) for face in found]
    vectors = [list(face.embedding) for found in per_photo for face in found]
    cut = body.threshold or clustering.CUT_DISTANCE
    groups, alone = await asyncio.to_thread(clustering.cluster, vectors, cut)
    return s.ClusterResponse(
        clusters=[s.FaceCluster(faces=[faces[i] for i in c.members],
                                representative=faces[c.representative]) for c in groups],
        unclustered=[faces[i] for i in alone], threshold=cut, model=model)
