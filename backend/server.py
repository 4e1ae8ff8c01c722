"""The gRPC servicer: LocalAI's Backend service over a FaceEngine."""
import contextlib
import functools
from concurrent import futures
import hmac
import logging
import os
import resource
import threading
import time

import grpc

from . import images
from .engine import FaceEngine
from face_contract.errors import (IDENTITY_MISMATCH, NO_MODEL_LOADED, Busy, Cancelled,
                                   FaceError, NotFound, NotReady)
from .loader import build_engine
from .models.session import IN_FLIGHT
from face_contract.rpc import backend_pb2 as pb
from face_contract.rpc import backend_pb2_grpc as pb_grpc
from face_contract.rpc import face_extras_pb2_grpc as xpb_grpc
from face_contract.similarity import confidence, cosine_distance

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 50 * 1024 * 1024
AUTH_ENV = "LOCALAI_GRPC_AUTH_TOKEN"
# gRPC Python serves every call from one thread pool. Face work runs on at most `workers` of
# its threads at once and the pool has POOL_PER_WORKER times as many, where calls past that
# wait their turn: Health (and Status, LoadModel) finds a free thread at once however busy the
# backend is, so a Health that times out means a hung process, not a busy one.
POOL_PER_WORKER = 4


def default_workers() -> int:
    return max(4, 2 * (os.cpu_count() or 1))


class FaceSlots:
    """Calls doing face work at once, at most `size`; more wait for one to end, up to their
    deadline."""

    def __init__(self, size: int):
        self.size = size
        self._free = threading.BoundedSemaphore(size)

    @contextlib.contextmanager
    def taken(self, context):
        if not self._free.acquire(timeout=context.time_remaining()):
            raise Busy(f"the backend was busy with {self.size} calls, all it serves at once, "
                       "for the whole deadline; retry shortly")
        try:
            yield
        finally:
            self._free.release()


class TokenAuth(grpc.ServerInterceptor):
    """Every call must carry `authorization: Bearer <token>` when a token is set."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(sent.encode(), self._expected):
            return continuation(handler_call_details)
        return self._deny


def still_wanted(context) -> None:
    """A checkpoint between costly steps: a call its caller cancelled stops here."""
    if not context.is_active():
        raise Cancelled("the caller cancelled the call")


def face_rpc(method):
    """Runs an RPC against the loaded engine; FaceErrors become their gRPC status.

    The method gets the call's context to pass to still_wanted between steps.
    """
    @functools.wraps(method)
    def wrapper(self, request, context):
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        log.debug("%s started", method.__name__)
        try:
            with self.face_slots.taken(context):
                still_wanted(context)  # it may have waited for a turn
                engine = self.engine
                if engine is None:
                    raise NotReady(f"{NO_MODEL_LOADED}: call LoadModel first")
                identity = getattr(request, "ModelIdentity", "")
                if identity and identity != engine.name:
                    raise NotFound(f"{IDENTITY_MISMATCH}: asked for {identity!r}, "
                                   f"loaded {engine.name!r}")
                with IN_FLIGHT:
                    return method(self, engine, request, context, started)
        except FaceError as exc:
            code = exc.grpc_code
            context.abort(code, str(exc))
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method.__name__)
            context.abort(code, f"internal error in {method.__name__}")
        finally:
            log.debug("%s %s %.1f ms", method.__name__, code.name,
                      (time.perf_counter() - started) * 1000)
    return wrapper


def _area(face) -> pb.FacialArea:
    x1, y1, x2, y2 = (float(v) for v in face.box)
    return pb.FacialArea(x=x1, y=y1, w=x2 - x1, h=y2 - y1)


class BackendServicer(pb_grpc.BackendServicer):
    def __init__(self, face_slots: FaceSlots | None = None):
        self.engine: FaceEngine | None = None
        self.face_slots = face_slots or FaceSlots(default_workers())
        self._load_lock = threading.Lock()

    def Health(self, request, context):
        return pb.Reply(message=b"OK")

    def LoadModel(self, request, context):
        with self._load_lock:
            try:
                self.engine = build_engine(request.Model, request.ModelPath, request.Options,
                                           cuda=request.CUDA, threads=request.Threads)
            except FaceError as exc:
                log.error("LoadModel %s failed: %s", request.Model, exc)
                return pb.Result(success=False, message=str(exc))
            except Exception as exc:
                log.exception("LoadModel %s failed", request.Model)
                return pb.Result(success=False, message=f"could not load {request.Model}: {exc}")
        return pb.Result(success=True, message=f"loaded {request.Model}")

    def Status(self, request, context):
        state = pb.StatusResponse.READY if self.engine else pb.StatusResponse.UNINITIALIZED
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return pb.StatusResponse(state=state, memory=pb.MemoryUsageData(
            total=rss, breakdown={"max_rss": rss}))

    @face_rpc
    def Embedding(self, engine, request, context, started):
        if not request.Images:
            raise images.InvalidInput("Images is empty: send one base64 image in Images[0]")
        img = images.decode(request.Images[0], "Images[0]")
        still_wanted(context)
        _, vectors = engine.embed([img], ["Images[0]"])
        return pb.EmbeddingResult(embeddings=vectors[0].tolist(), dim=engine.dim,
                                  layout=pb.EMBEDDING_LAYOUT_FINAL)

    @face_rpc
    def Detect(self, engine, request, context, started):
        img = images.decode(request.src, "src")
        still_wanted(context)
        faces = engine.detect(img, request.threshold)
        return pb.DetectResponse(Detections=[
            pb.Detection(x=float(f.box[0]), y=float(f.box[1]), width=f.width, height=f.height,
                         confidence=f.score, class_name="face") for f in faces])

    @face_rpc
    def FaceVerify(self, engine, request, context, started):
        img1 = images.decode(request.img1, "img1")
        still_wanted(context)
        imgs = [img1, images.decode(request.img2, "img2")]
        still_wanted(context)
        if request.anti_spoofing:  # refused before any face work
            for img, field in zip(imgs, ("img1", "img2")):
                engine.liveness_ready(img, field)
        faces, vectors = engine.embed(imgs, ["img1", "img2"])
        threshold = request.threshold if request.threshold > 0 else engine.verify_threshold
        distance = cosine_distance(vectors[0], vectors[1])
        reply = pb.FaceVerifyResponse(
            verified=distance < threshold, distance=distance, threshold=threshold,
            confidence=confidence(distance, threshold), model=engine.name,
            img1_area=_area(faces[0]), img2_area=_area(faces[1]))
        if request.anti_spoofing:
            still_wanted(context)
            reply.img1_is_real, reply.img1_antispoof_score = engine.check_liveness(
                imgs[0], faces[0], "img1")
            reply.img2_is_real, reply.img2_antispoof_score = engine.check_liveness(
                imgs[1], faces[1], "img2")
            reply.verified = reply.verified and reply.img1_is_real and reply.img2_is_real
        reply.processing_time_ms = (time.perf_counter() - started) * 1000
        return reply

    @face_rpc
    def FaceAnalyze(self, engine, request, context, started):
        img = images.decode(request.img, "img")
        still_wanted(context)
        reply = pb.FaceAnalyzeResponse()
        for res in engine.analyze(img, list(request.actions), request.anti_spoofing):
            item = reply.faces.add(region=_area(res.face), face_confidence=res.face.score)
            if res.age is not None:
                item.age = res.age
            if res.gender is not None:
                item.gender.update(res.gender)
                item.dominant_gender = max(res.gender, key=res.gender.get)
            if res.is_real is not None:
                item.is_real, item.antispoof_score = res.is_real, res.antispoof_score
        return reply


def make_server(addr: str, workers: int | None = None) -> grpc.Server:
    token = os.environ.get(AUTH_ENV, "")
    workers = workers or default_workers()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=POOL_PER_WORKER * workers),
        interceptors=[TokenAuth(token)] if token else [],
        options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    backend = BackendServicer(FaceSlots(workers))
    pb_grpc.add_BackendServicer_to_server(backend, server)
    from .extras import FaceExtrasServicer  # it builds on this module's servicer
    xpb_grpc.add_FaceExtrasServicer_to_server(FaceExtrasServicer(backend), server)
    if server.add_insecure_port(addr) == 0:
        raise SystemExit(f"cannot listen on {addr}")
    return server
