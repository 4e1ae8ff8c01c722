"""The stateless face routes: verify, analyze, embed and detection."""
import asyncio

from fastapi import Depends

from face_contract.actions import UNSUPPORTED_ACTIONS
from face_contract.rpc import backend_pb2 as pb

from .. import schemas as s
from ..images import image_b64
from ..quality import gate_of
from .common import Gateway, _area, _f, _scores, api, face, gateway
from .quality import assessed, refuse_below
from ..middleware.multipart import form_schema


@api.post("/v1/face/verify", response_model=s.VerifyResponse,
          openapi_extra=form_schema(s.VerifyRequest), **face)
async def verify(body: s.VerifyRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    # One after the other: each check holds a decoded copy of its image for a moment.
    img1 = await image_b64(body.img1, "img1", gw.fetcher)
    img2 = await image_b64(body.img2, "img2", gw.fetcher)
    gate = gate_of(gw.backends.config(model), None)
    # LocalAI's FaceVerify answers as before; each probe's quality comes from FaceExtras.
    # One call after the other: a backend request holds copies of its images until answered.
    r = await gw.backends.call(model, "FaceVerify", pb.FaceVerifyRequest(
        threshold=body.threshold or 0.0, anti_spoofing=body.anti_spoofing),
        large={"img1": img1, "img2": img2})
    probes = await asyncio.gather(gw.faces(model, img1, "img1"), gw.faces(model, img2, "img2"))
    quality = {}
    for field, probe in zip(("img1", "img2"), probes):  # FaceVerify found a face in each
        quality[f"{field}_quality"] = assessed(probe.faces[0].quality, gate)
        refuse_below(quality[f"{field}_quality"], field, body.min_quality)
    liveness = {}
    if body.anti_spoofing:
        liveness = dict(
            img1_is_real=r.img1_is_real, img1_antispoof_score=_f(r.img1_antispoof_score),
            img2_is_real=r.img2_is_real, img2_antispoof_score=_f(r.img2_antispoof_score),
            failed_liveness=[field for field, real in (("img1", r.img1_is_real),
                                                       ("img2", r.img2_is_real)) if not real]
            or None)
    return s.VerifyResponse(
        verified=r.verified, distance=_f(r.distance), threshold=_f(r.threshold),
        confidence=_f(r.confidence),
        model=r.model or model, img1_area=_area(r.img1_area), img2_area=_area(r.img2_area),
        processing_time_ms=_f(r.processing_time_ms), **liveness, **quality)


@api.post("/v1/face/analyze", response_model=s.AnalyzeResponse,
          openapi_extra=form_schema(s.AnalyzeRequest), **face)
async def analyze(body: s.AnalyzeRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    img = await image_b64(body.img, "img", gw.fetcher)
    # One call after the other: a backend request holds copies of its image until answered.
    r = await gw.backends.call(model, "FaceAnalyze", pb.FaceAnalyzeRequest(
        actions=body.actions or [], anti_spoofing=body.anti_spoofing), large={"img": img})
    found = await gw.faces(model, img, "img", all_faces=True)
    gate = gate_of(gw.backends.config(model), None)
    # The same detector at the same floor, largest first: the faces pair up in order.
    quality = [assessed(f.quality, gate) for f in found.faces]
    # proto3 cannot tell "not computed" from zero/empty; the backend leaves what it did
    # not compute empty, and a computed age is never exactly 0.
    return s.AnalyzeResponse(faces=[s.FaceAnalysis(
        region=_area(f.region), face_confidence=_f(f.face_confidence),
        age=_f(f.age) or None,
        dominant_gender=f.dominant_gender or None, gender=_scores(f.gender),
        dominant_emotion=f.dominant_emotion or None, emotion=_scores(f.emotion),
        dominant_race=f.dominant_race or None, race=_scores(f.race),
        is_real=f.is_real if body.anti_spoofing else None,
        antispoof_score=_f(f.antispoof_score) if body.anti_spoofing else None,
        quality=quality[i] if i < len(quality) else None,
    ) for i, f in enumerate(r.faces)], unsupported_actions=[
        a for a in UNSUPPORTED_ACTIONS if a in (body.actions or [])] or None)


@api.post("/v1/face/embed", response_model=s.EmbedResponse,
          openapi_extra=form_schema(s.EmbedRequest), **face)
async def embed(body: s.EmbedRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    vector = await gw.embedding(model, body.img)
    return s.EmbedResponse(embedding=vector, dim=len(vector), model=model)


@api.post("/v1/detection", response_model=s.DetectionResponse,
          openapi_extra=form_schema(s.DetectionRequest), **face)
# LocalAI's docs send face detection to /v1/face/detect, a path LocalAI itself does not serve.
@api.post("/v1/face/detect", response_model=s.DetectionResponse,
          openapi_extra=form_schema(s.DetectionRequest), summary="Detection (alias)",
          description="The same as /v1/detection, at the path LocalAI's documentation names.",
          **face)
async def detection(body: s.DetectionRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    image = await image_b64(body.image, "image", gw.fetcher)
    # One call after the other: a backend request holds copies of its image until answered.
    r = await gw.call(model, "Detect", pb.DetectOptions(threshold=body.threshold or 0.0),
                      large={"src": image}, src="image")
    # Quality of the faces at the model's own floor only: a low `threshold` finds many
    # boxes, and each quality costs an embedding run.
    found = await gw.faces(model, image, "image", all_faces=True)
    gate = gate_of(gw.backends.config(model), None)
    # The same detector on the same image: a face is the same box in both answers.
    quality = {(f.x, f.y): assessed(f.quality, gate) for f in found.faces}
    # Past max_faces the most confident are kept, still in the backend's order (largest first).
    faces = r.Detections
    best = sorted(range(len(faces)), key=lambda i: faces[i].confidence, reverse=True)
    kept = sorted(best[:body.max_faces])
    return s.DetectionResponse(detections=[s.Detection(
        x=_f(faces[i].x), y=_f(faces[i].y), width=_f(faces[i].width),
        height=_f(faces[i].height), class_name=faces[i].class_name or "face",
        confidence=_f(faces[i].confidence), quality=quality.get((faces[i].x, faces[i].y)))
        for i in kept])


