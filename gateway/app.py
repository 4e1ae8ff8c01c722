"""The ASGI app: /v1/face/* routes translated into gRPC calls, plus the registry.

Routes resolve the model and store first (cheap 400/404), then turn image
strings into base64 bytes (fetching URLs safely), then call the model's backend.
"""
import asyncio
import contextlib
import dataclasses
import re

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import PlainTextResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST

from face_contract.errors import InvalidInput, NotFound
from face_contract.rpc import backend_pb2 as pb
from face_contract.similarity import confidence

from . import auth, openset
from . import schemas as s
from .admission import ConcurrencyLimitMiddleware
from .backends import Backends
from .bodylimit import BodyLimitMiddleware
from .docs import drop_validation_422
from .errors import error_response, install_error_handlers
from .fetch import UrlFetcher
from .images import image_b64
from .jsonbody import OffLoopJsonRoute
from .members import BackendError
from .metrics import Metrics, MetricsMiddleware
from .multipart import MultipartMiddleware, form_schema
from .page import install_page
from .settings import Settings
from .store import Filters, Record, Stores, VectorStore, open_stores, require


@dataclasses.dataclass
class Gateway:
    backends: Backends
    stores: Stores
    fetcher: UrlFetcher
    metrics: Metrics

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


async def gateway(request: Request) -> Gateway:
    # async: a plain def dependency is run on a worker thread, a hand-off on every request
    return request.app.state.gateway


async def single_valued_query(request: Request) -> None:
    """`?model=a&model=b` is refused, not read as one of the two."""
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidInput(f"query parameter {repeated[0]} is given more than once")


ERRORS = {code: {"model": s.ErrorResponse} for code in (400, 404, 408, 412, 413, 500, 503)}
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


@api.post("/v1/face/verify", response_model=s.VerifyResponse,
          openapi_extra=form_schema(s.VerifyRequest), **face)
async def verify(body: s.VerifyRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    # One after the other: each check holds a decoded copy of its image for a moment.
    img1 = await image_b64(body.img1, "img1", gw.fetcher)
    img2 = await image_b64(body.img2, "img2", gw.fetcher)
    r = await gw.backends.call(model, "FaceVerify", pb.FaceVerifyRequest(
        threshold=body.threshold or 0.0, anti_spoofing=body.anti_spoofing),
        large={"img1": img1, "img2": img2})
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
        processing_time_ms=_f(r.processing_time_ms), **liveness)


@api.post("/v1/face/analyze", response_model=s.AnalyzeResponse,
          openapi_extra=form_schema(s.AnalyzeRequest), **face)
async def analyze(body: s.AnalyzeRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    img = await image_b64(body.img, "img", gw.fetcher)
    r = await gw.backends.call(model, "FaceAnalyze", pb.FaceAnalyzeRequest(
        actions=body.actions or [], anti_spoofing=body.anti_spoofing), large={"img": img})
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
    ) for f in r.faces])


@api.post("/v1/face/embed", response_model=s.EmbedResponse,
          openapi_extra=form_schema(s.EmbedRequest), **face)
async def embed(body: s.EmbedRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    vector = await gw.embedding(model, body.img)
    return s.EmbedResponse(embedding=vector, dim=len(vector), model=model)


@api.post("/v1/face/register", response_model=s.RegisterResponse,
          openapi_extra=form_schema(s.RegisterRequest), **face)
async def register(body: s.RegisterRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    store = require(gw.stores, body.store)
    photos = body.photos()
    vectors = await asyncio.gather(*(gw.embedding(model, img, field) for field, img in photos))
    if body.template:  # Record.new normalises the mean of the unit vectors again
        vectors = [np.mean(np.asarray(vectors, dtype=np.float32), axis=0)]
    records = [Record.new(body.name, body.labels or {}, model, v) for v in vectors]
    await asyncio.to_thread(_add_all, store, records)
    first = records[0]
    return s.RegisterResponse(id=first.id, name=first.name, registered_at=first.registered_at,
                              ids=[r.id for r in records] if body.imgs is not None else None)


def _add_all(store: VectorStore, records: list[Record]) -> None:
    """Adds every record (each committed to disk before the 200), or none: the ones added
    before a failure are deleted again."""
    added = []
    try:
        for record in records:
            store.add(record)
            added.append(record)
    except BaseException:
        for record in added:
            store.delete(record.id)
        raise


@api.post("/v1/face/identify", response_model=s.IdentifyResponse,
          openapi_extra=form_schema(s.IdentifyRequest), **face)
async def identify(body: s.IdentifyRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    store = require(gw.stores, body.store)
    decision = await asyncio.to_thread(
        openset.decide, gw.backends.config(model), model, body.threshold,
        body.match_policy, body.fpir, lambda: store.counts_by_model().get(model, 0))
    vector = await gw.embedding(model, body.img)
    if body.group_by == "name":
        nearest = await asyncio.to_thread(openset.nearest_people, store, model, vector, body.top_k)
    else:
        nearest = await asyncio.to_thread(store.search, model, vector, body.top_k)
    threshold = decision.threshold
    matches = []
    for rec, distance in nearest:
        distance = _f(distance)  # the float32 the store computed, shown as such
        matches.append(s.IdentifyMatch(
            id=rec.id, name=rec.name, labels=rec.labels, distance=distance,
            confidence=confidence(distance, threshold), match=distance <= threshold))
    return s.IdentifyResponse(
        matches=matches, threshold=_f(threshold), match_policy=decision.policy,
        threshold_source=decision.source, fpir=decision.fpir, gallery_size=decision.gallery_size)


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
    return s.RegistryResponse(total=await asyncio.to_thread(chosen.count, filters), items=[
        s.RegistryItem(id=r.id, name=r.name, labels=r.labels, model=r.model,
                       registered_at=r.registered_at) for r in records])


@api.post("/v1/detection", response_model=s.DetectionResponse,
          openapi_extra=form_schema(s.DetectionRequest), **face)
async def detection(body: s.DetectionRequest, gw: Gateway = Depends(gateway)):
    model = gw.backends.resolve(body.model)
    image = await image_b64(body.image, "image", gw.fetcher)
    r = await gw.call(model, "Detect", pb.DetectOptions(threshold=body.threshold or 0.0),
                      large={"src": image}, src="image")
    # Past max_faces the most confident are kept, still in the backend's order (largest first).
    faces = r.Detections
    best = sorted(range(len(faces)), key=lambda i: faces[i].confidence, reverse=True)
    kept = [faces[i] for i in sorted(best[:body.max_faces])]
    return s.DetectionResponse(detections=[s.Detection(
        x=_f(d.x), y=_f(d.y), width=_f(d.width), height=_f(d.height),
        class_name=d.class_name or "face", confidence=_f(d.confidence)) for d in kept])


# Where the backends run: for a read-write key, or a loopback caller with keys off.
BACKEND_DETAILS = ("pid", "address", "backends")


@api.get("/v1/models", response_model=s.ModelList, **face)
async def models(request: Request, gw: Gateway = Depends(gateway)):
    items = gw.backends.describe()
    if not auth.may_see_backends(request):
        items = [{k: v for k, v in item.items() if k not in BACKEND_DETAILS} for item in items]
    return s.ModelList(data=[s.ModelInfo(**item) for item in items])


@api.get("/healthz")
async def healthz():
    return {"status": "ok"}


@api.get("/readyz")
async def readyz(gw: Gateway = Depends(gateway)):
    states = await gw.backends.probe()
    # A degraded pool still serves: some of its backends answer.
    failing = {name: state for name, state in states.items()
               if state not in ("ok", "idle") and not state.startswith("degraded")}
    if failing:
        return error_response(503, "backends not ready: " + "; ".join(
            f"{name}: {state}" for name, state in failing.items()))
    return {"status": "ready", "backends": states}


@api.get("/metrics", response_class=PlainTextResponse)  # documented as text/plain
async def metrics(gw: Gateway = Depends(gateway)):
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# The image routes (those documenting a form upload) and their JSON bodies.
FORM_ROUTES = {route.path: route.endpoint.__annotations__["body"]
               for route in api.routes if route.openapi_extra}


def create_app(settings: Settings) -> FastAPI:
    stores = open_stores(settings.data_dir, settings.store_specs(), settings.default_store,
                         settings.ann_threshold)
    backends = Backends(settings)
    gw = Gateway(backends=backends, stores=stores,
                 fetcher=UrlFetcher(settings.allow_private_urls, settings.max_url_bytes,
                                    settings.url_timeout_s),
                 metrics=Metrics(stores, backends))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        backends.start_watching()
        default = backends.default_model()
        if default is not None:
            backends.preload(default)
        try:
            yield
        finally:
            await backends.close()
            stores.close()

    # Swagger UI and ReDoc come from the fastapi-offline package: /docs works offline.
    app = FastAPIOffline(title="Face gateway", version="0.1.0", lifespan=lifespan,
                         description="Face verification, analysis, detection and a durable "
                                     "face registry over LocalAI-compatible gRPC face backends. "
                                     "Image routes take JSON or multipart/form-data uploads.")
    app.state.gateway = gw
    app.state.auth = auth.Policy(auth.ApiKeys(settings.api_keys, settings.api_keys_file),
                                 settings.allowed_hosts, settings.open_docs, settings.open_metrics)
    app.include_router(api)
    install_page(app)
    drop_validation_422(app)
    install_error_handlers(app)
    app.add_middleware(MultipartMiddleware, routes=FORM_ROUTES)  # inside the body limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       max_inflight_bytes=settings.max_inflight_bytes,
                       body_timeout_s=settings.body_timeout_s)
    # Outside the body limit: a request refused for concurrency is refused before its body is read.
    app.add_middleware(ConcurrencyLimitMiddleware, routes=frozenset(FORM_ROUTES),
                       max_concurrency=settings.max_concurrency)
    # Outside both: a caller without a valid key takes no concurrency slot and sends no body.
    app.add_middleware(auth.AuthMiddleware, policy=app.state.auth)
    auth.document(app, app.state.auth)
    app.add_middleware(MetricsMiddleware, metrics=gw.metrics)  # added last: outermost
    return app
