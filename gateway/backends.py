"""Backend processes per model, and the gRPC calls the routes make on them.

Each installed model (a YAML config in the models folder) gets its own
`python -m backend` on a free loopback port, started on first use, sent
LoadModel with the config's options, health-checked, restarted when it dies and
stopped on shutdown. `--backend NAME=HOST:PORT` points a model at a backend run
by someone else instead. Every call has a deadline, so no request waits forever
on a backend.
"""
import asyncio
import base64
import contextlib
import dataclasses
import io
import logging
import os
import socket
import subprocess
import sys

import grpc
from PIL import Image

from face_contract.errors import FaceError, InvalidInput, NotFound
from face_contract.images import check_limits
from face_contract.rpc import backend_pb2 as pb
from face_contract.rpc import backend_pb2_grpc as pb_grpc
from gallery.configs import ModelConfig, load_model_configs

from .settings import Settings

log = logging.getLogger("gateway.backends")

MESSAGE_LIMIT = 50 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MESSAGE_LIMIT),
                   ("grpc.max_receive_message_length", MESSAGE_LIMIT),
                   # A starting backend refuses connections for seconds; gRPC's default
                   # backoff (1 s growing to 120 s) would leave it idle long after it is up.
                   ("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
HEALTH_TIMEOUT_S = 5.0
WATCH_INTERVAL_S = 1.0
STOP_GRACE_S = 10.0
CLOSE_GRACE_S = 5.0

# Recognizer defaults of PROTOCOL.md for configs without `verify_threshold`.
PACK_THRESHOLDS = {"buffalo_l": 0.35, "buffalo_m": 0.35, "antelopev2": 0.35,
                   "buffalo_s": 0.40, "buffalo_sc": 0.40}
ENGINE_THRESHOLDS = {"opencv": 0.50, "onnx_direct": 0.50}
FALLBACK_THRESHOLD = 0.35


class BackendError(FaceError):
    """A backend's gRPC failure, keeping its status code for the HTTP mapping."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.grpc_code = code


def default_threshold(config: ModelConfig | None) -> float:
    if config is None:
        return FALLBACK_THRESHOLD
    explicit = config.option("verify_threshold")
    if explicit:
        try:
            return float(explicit)
        except ValueError:
            log.warning("model %s: verify_threshold %r is not a number", config.name, explicit)
    if config.option("engine") in ENGINE_THRESHOLDS:
        return ENGINE_THRESHOLDS[config.option("engine")]
    return PACK_THRESHOLDS.get(config.option("model_pack", "buffalo_l"), FALLBACK_THRESHOLD)


def free_port() -> int:
    """A loopback port free right now (for backends the gateway starts, and for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Backend:
    name: str
    external_address: str | None  # None: the gateway runs this backend itself
    config: ModelConfig | None
    address: str | None = None
    process: subprocess.Popen | None = None
    channel: grpc.aio.Channel | None = None
    stub: pb_grpc.BackendStub | None = None
    loaded: bool = False  # LoadModel succeeded (or is assumed, for an external one without config)
    suspect: bool = False  # a call saw UNAVAILABLE: re-check before the next one
    starts: int = 0
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @property
    def managed(self) -> bool:
        return self.external_address is None

    @property
    def running(self) -> bool:
        return not self.managed or (self.process is not None and self.process.poll() is None)

    @property
    def usable(self) -> bool:
        return self.loaded and not self.suspect and self.running

    @property
    def identity(self) -> str:
        # Checked by the backend on every call when the gateway loaded the model itself.
        return self.name if self.config is not None else ""


class Backends:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._configs = load_model_configs(settings.models_dir)
        self._backends: dict[str, Backend] = {}
        self._metadata = (("authorization", f"Bearer {settings.auth_token}"),) \
            if settings.auth_token else ()
        self._watcher: asyncio.Task | None = None
        self._preloader: asyncio.Task | None = None

    # -- models ---------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(set(self._configs) | set(self.settings.external_backends))

    def config(self, name: str) -> ModelConfig | None:
        return self._configs.get(name)

    def default_model(self) -> str | None:
        """The configured default model, else the only installed one, else None."""
        names = self.names()
        return self.settings.default_model or (names[0] if len(names) == 1 else None)

    def resolve(self, requested: str | None) -> str:
        """The model a request addresses: given, else the default; 400 / 404 as PROTOCOL says."""
        name = requested or self.default_model()
        if not name:
            raise InvalidInput("model is required (the gateway has no default model and "
                               f"{len(self.names())} models are installed)")
        if name not in self.names():
            self._configs = load_model_configs(self.settings.models_dir)  # installed since start?
        if name not in self.names():
            raise NotFound(f"model '{name}' is not installed (installed: "
                           f"{', '.join(self.names()) or 'none'})")
        return name

    def describe(self) -> list[dict]:
        out = []
        for name in self.names():
            backend = self._backends.get(name)
            item = {"id": name, "object": "model",
                    "loaded": bool(backend and backend.loaded and backend.running)}
            if backend and backend.managed and backend.running:
                item["pid"] = backend.process.pid
            if backend and backend.address:
                item["address"] = backend.address
            out.append(item)
        return out

    # -- calls ----------------------------------------------------------------

    async def call(self, name: str, method: str, request):
        """`method` of the model's backend (started / loaded first if needed), with a deadline."""
        backend = await self._ready(name)
        request.ModelIdentity = backend.identity
        try:
            return await getattr(backend.stub, method)(
                request, timeout=self.settings.backend_call_timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._failure(backend, exc, method) from None

    def _failure(self, backend: Backend, exc: grpc.aio.AioRpcError, what: str) -> BackendError:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            backend.suspect = True
            return BackendError(exc.code(), f"the backend of model '{backend.name}' is unavailable "
                                            f"({exc.details()}); retry shortly")
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return BackendError(exc.code(), f"the backend of model '{backend.name}' did not "
                                            f"answer {what} in time")
        return BackendError(exc.code(), exc.details() or exc.code().name)

    def _backend(self, name: str) -> Backend:
        if name not in self._backends:
            self._backends[name] = Backend(
                name=name, external_address=self.settings.external_backends.get(name),
                config=self.config(name))
        return self._backends[name]

    async def _ready(self, name: str) -> Backend:
        backend = self._backend(name)
        if backend.usable:
            return backend
        async with backend.lock:  # one start / load per model; other requests wait for it
            if not backend.usable:
                await self._bring_up(backend)
        return backend

    async def _bring_up(self, backend: Backend) -> None:
        if backend.managed and not backend.running:
            await self._start(backend)
        elif backend.channel is None:
            self._connect(backend, backend.external_address)
        step = "Health"
        try:
            await backend.stub.Health(pb.HealthMessage(), timeout=HEALTH_TIMEOUT_S,
                                      metadata=self._metadata)
            if backend.suspect and backend.loaded:  # alive again: is the model still loaded?
                step = "Status"
                status = await backend.stub.Status(pb.HealthMessage(), timeout=HEALTH_TIMEOUT_S,
                                                   metadata=self._metadata)
                backend.loaded = status.state == pb.StatusResponse.READY
            if not backend.loaded:
                step = "LoadModel"
                await self._load(backend)
        except grpc.aio.AioRpcError as exc:
            raise self._failure(backend, exc, step) from None
        backend.suspect = False

    async def _load(self, backend: Backend) -> None:
        cfg = backend.config
        if cfg is not None:
            model_file = str(cfg.models_dir / cfg.model) if cfg.model else ""
            result = await backend.stub.LoadModel(
                pb.ModelOptions(Model=cfg.name, ModelPath=str(cfg.models_dir),
                                ModelFile=model_file, Options=list(cfg.options)),
                timeout=self.settings.backend_load_timeout_s, metadata=self._metadata)
            if not result.success:
                raise BackendError(grpc.StatusCode.INTERNAL,
                                   f"model '{cfg.name}' failed to load: {result.message}")
            log.info("model %s loaded on %s", cfg.name, backend.address)
        backend.loaded = True

    def _connect(self, backend: Backend, address: str) -> None:
        backend.address = address
        backend.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        backend.stub = pb_grpc.BackendStub(backend.channel)

    async def _start(self, backend: Backend) -> None:
        await self._discard(backend)
        address = f"127.0.0.1:{free_port()}"
        # The backend logs at the gateway's level unless told otherwise.
        env = {"FACE_LOG_LEVEL": logging.getLevelName(logging.getLogger().level), **os.environ}
        if self.settings.auth_token:
            env["LOCALAI_GRPC_AUTH_TOKEN"] = self.settings.auth_token
        # Popen runs on the event loop's (main) thread: the parent-death signal set by
        # gateway.launch follows the thread that started the child, so it must outlive it.
        backend.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.launch", str(os.getpid()),
             sys.executable, "-m", "backend", "--addr", address],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        backend.starts += 1
        backend.loaded = False
        log.info("started backend for model %s: pid %d on %s",
                 backend.name, backend.process.pid, address)
        self._connect(backend, address)
        deadline = asyncio.get_running_loop().time() + self.settings.backend_start_timeout_s
        while True:
            if backend.process.poll() is not None:
                raise BackendError(grpc.StatusCode.UNAVAILABLE,
                                   f"the backend of model '{backend.name}' exited with code "
                                   f"{backend.process.returncode} while starting")
            if asyncio.get_running_loop().time() > deadline:
                await self._discard(backend)
                raise BackendError(grpc.StatusCode.UNAVAILABLE,
                                   f"the backend of model '{backend.name}' did not start within "
                                   f"{self.settings.backend_start_timeout_s:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(backend.channel.channel_ready(), 0.5)
                return

    async def _discard(self, backend: Backend) -> None:
        """Stops the process (if any), then closes the channel, of a backend being replaced."""
        channel, backend.channel, backend.stub = backend.channel, None, None
        backend.loaded = False
        if backend.managed and backend.process is not None:
            await _stop_process(backend.process)
            backend.process = None
        if channel is not None:
            # With the process gone, calls still in flight end at once with UNAVAILABLE
            # (503); closing without a grace period would cancel them instead (500).
            await channel.close(grace=CLOSE_GRACE_S)

    # -- supervision ----------------------------------------------------------

    def start_watching(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    def preload(self, name: str) -> None:
        """Starts and loads a model's backend now, and sends it one image, so that the first
        request is not the slow one (the first image check and call each cost milliseconds)."""
        async def bring_up():
            try:
                await self._ready(name)
                jpeg = io.BytesIO()
                Image.new("RGB", (64, 64)).save(jpeg, "JPEG")
                check_limits(jpeg.getvalue(), "warm-up image")
                await self.call(name, "Detect", pb.DetectOptions(
                    src=base64.b64encode(jpeg.getvalue()).decode("ascii")))
            except Exception as exc:  # the first request retries and reports it
                log.error("preloading model %s failed: %s", name, exc)
        self._preloader = asyncio.create_task(bring_up())

    async def _watch(self) -> None:
        """Restarts a backend that died after serving, without waiting for the next request."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            for backend in list(self._backends.values()):
                if backend.managed and backend.loaded and not backend.running:
                    log.warning("backend of model %s (pid %d) exited with code %s; restarting",
                                backend.name, backend.process.pid, backend.process.returncode)
                    backend.suspect = True
                    try:
                        await self._ready(backend.name)
                    except Exception as exc:  # the watch goes on; the next request retries
                        log.error("restarting the backend of model %s failed: %s",
                                  backend.name, exc)

    async def probe(self) -> dict[str, str]:
        """State of every backend that should be reachable now: 'ok', 'idle' or the failure."""
        states = {}
        for name in self.names():
            backend = self._backend(name)
            if backend.managed and backend.process is None:
                states[name] = "idle"  # started on first use
                continue
            if not backend.running:
                states[name] = f"exited with code {backend.process.returncode}"
                continue
            if not backend.loaded:
                states[name] = "loading"
                continue
            if backend.channel is None:
                self._connect(backend, backend.external_address)
            try:
                await backend.stub.Health(pb.HealthMessage(), timeout=HEALTH_TIMEOUT_S,
                                          metadata=self._metadata)
                states[name] = "ok"
            except grpc.aio.AioRpcError as exc:
                states[name] = f"unreachable: {exc.code().name} {exc.details()}"
        return states

    def starts(self) -> dict[str, int]:
        return {name: b.starts for name, b in self._backends.items() if b.managed}

    async def close(self) -> None:
        for task in (self._watcher, self._preloader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(*(self._discard(b) for b in self._backends.values()))


async def _stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # the backend stops cleanly on SIGTERM
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), STOP_GRACE_S)
        except asyncio.TimeoutError:
            process.kill()
    await asyncio.to_thread(process.wait)
