"""One backend of a model's pool: a process the gateway starts, or an address it was given.

A Member knows how to start its process (with a bearer token of the gateway's own),
connect, health-check, load the model and stop; the pool around it (backends.py)
decides which member a call goes to and when one is brought back.
"""
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import subprocess
import sys

import grpc

from face_contract.errors import IDENTITY_MISMATCH, NO_MODEL_LOADED, FaceError
from face_contract.rpc import backend_pb2 as pb
from face_contract.rpc import backend_pb2_grpc as pb_grpc
from face_contract.rpc import face_extras_pb2 as xpb
from gallery.configs import ModelConfig

from ..settings import Settings
from .wire import serialise

log = logging.getLogger("gateway.backends")

MESSAGE_LIMIT = 50 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MESSAGE_LIMIT),
                   ("grpc.max_receive_message_length", MESSAGE_LIMIT),
                   # A starting backend refuses connections for seconds; gRPC's default
                   # backoff (1 s growing to 120 s) would leave it idle long after it is up.
                   ("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
# Health is answered at once by a live backend, however busy: a short deadline finds hung ones.
# Every method a backend serves: LocalAI's Backend service and our FaceExtras beside it
# (proto/face_extras.proto), by name -> (its path, the reply's class).
METHODS = {method.name: (f"/{service.full_name}/{method.name}",
                         getattr(module, method.output_type.name))
           for module, service in ((pb, pb.DESCRIPTOR.services_by_name["Backend"]),
                                   (xpb, xpb.DESCRIPTOR.services_by_name["FaceExtras"]))
           for method in service.methods}
HEALTH_TIMEOUT_S = 3.0
# Face work threads of a backend the gateway starts (--workers): a member is sent at most that
# many calls at once and more wait here, in the gateway, for one to end. (The backend would
# queue them too, on threads kept apart from its Health: backend/server.py.) A backend started
# by someone else is assumed to run its default, the same number.
BACKEND_WORKERS = max(4, 2 * (os.cpu_count() or 1))
STOP_GRACE_S = 10.0
CLOSE_GRACE_S = 5.0


class BackendError(FaceError):
    """A backend's gRPC failure, keeping its status code for the HTTP mapping."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.grpc_code = code


def free_port() -> int:
    """A loopback port free right now (for backends the gateway starts, and for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass(eq=False)
class Member:
    """One backend of a model's pool: a process the gateway runs, or an address it was given."""
    model: str
    external_address: str | None  # None: the gateway runs this backend itself
    config: ModelConfig | None
    settings: Settings
    token: str | None = None  # bearer token sent on every call
    address: str | None = None
    process: subprocess.Popen | None = None
    channel: grpc.aio.Channel | None = None
    stub: pb_grpc.BackendStub | None = None
    loaded: bool = False  # LoadModel succeeded (or is assumed, for an external one without config)
    out: bool = False  # out of the pool after a failed call or health check, until re-checked
    in_flight: int = 0
    calls: int = 0
    starts: int = 0
    failures: int = 0  # failed attempts of the watcher to bring it back, in a row
    next_check: float = 0.0  # event-loop time before which the watcher leaves it alone
    wanted: bool = False  # a call or the preload asked for it: the watcher keeps it up from then
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    slots: asyncio.Semaphore = dataclasses.field(
        default_factory=lambda: asyncio.Semaphore(BACKEND_WORKERS))

    @property
    def managed(self) -> bool:
        return self.external_address is None

    @property
    def running(self) -> bool:
        return not self.managed or (self.process is not None and self.process.poll() is None)

    @property
    def usable(self) -> bool:
        return self.loaded and not self.out and self.running and self.stub is not None

    @property
    def identity(self) -> str:
        # Checked by the backend on every call when the gateway loaded the model itself.
        return self.model if self.config is not None else ""

    @property
    def metadata(self) -> tuple:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    # -- calls ----------------------------------------------------------------

    async def call(self, method: str, request, large: dict | None = None):
        """`method` with the call deadline, once one of the member's slots is free (waiting at
        most that deadline too); counted in `in_flight` from the moment it waits.

        `large` holds the request's image fields: serialised on a thread (gateway.pool.wire) and
        sent as bytes, so a 48 MiB request does not hold the event loop."""
        request.ModelIdentity = self.identity
        self.in_flight += 1
        self.calls += 1
        timeout = self.settings.backend_call_timeout_s
        try:
            try:
                await asyncio.wait_for(self.slots.acquire(), timeout)
            except asyncio.TimeoutError:
                raise BackendError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"the backends of model '{self.model}' stayed busy for "
                                   f"{timeout:g} s; retry shortly") from None
            try:
                if self.channel is None:  # discarded (restarted) while the call waited
                    raise BackendError(grpc.StatusCode.UNAVAILABLE,
                                       f"the backend of model '{self.model}' restarted; "
                                       "retry shortly")
                wire = await asyncio.to_thread(serialise, request, large or {})
                path, reply = METHODS[method]
                send = self.channel.unary_unary(path, response_deserializer=reply.FromString)
                return await send(wire, timeout=timeout, metadata=self.metadata)
            finally:
                self.slots.release()
        finally:
            self.in_flight -= 1

    def failure(self, exc: grpc.aio.AioRpcError, what: str) -> BackendError:
        """The error a caller sees; marks this member for a re-check when the failure is its own."""
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            self.out = True
            return BackendError(code, f"the backend of model '{self.model}' is unavailable "
                                      f"({exc.details()}); retry shortly")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.out = True  # hung or overloaded: the watcher's health check decides
            return BackendError(code, f"the backend of model '{self.model}' did not "
                                      f"answer {what} in time; retry shortly")
        if needs_load(exc):
            self.loaded = False
        return BackendError(code, exc.details() or code.name)

    async def health(self) -> None:
        await self.stub.Health(pb.HealthMessage(), timeout=HEALTH_TIMEOUT_S,
                                metadata=self.metadata)

    # -- bringing it up -------------------------------------------------------

    async def ensure(self) -> None:
        """Brings it up (start, connect, health, load) unless it is usable already."""
        self.wanted = True
        async with self.lock:  # one start / load at a time; other callers wait for it
            if not self.usable:
                await self._bring_up()

    async def _bring_up(self) -> None:
        if self.managed and not self.running:
            await self._start()
        elif self.channel is None:
            self.connect(self.external_address)
        step = "Health"
        try:
            try:
                await self.health()
            except grpc.aio.AioRpcError:
                if not self.managed:
                    raise
                log.warning("backend of model %s (pid %d) does not answer health checks; "
                            "restarting it", self.model, self.process.pid)
                await self._start(kill=True)
                await self.health()
            if self.out and self.loaded:  # alive again: is the model still loaded?
                step = "Status"
                status = await self.stub.Status(pb.HealthMessage(), timeout=HEALTH_TIMEOUT_S,
                                                metadata=self.metadata)
                self.loaded = status.state == pb.StatusResponse.READY
            if not self.loaded:
                step = "LoadModel"
                await self._load()
        except grpc.aio.AioRpcError as exc:
            raise self.failure(exc, step) from None
        self.out = False

    async def _load(self) -> None:
        cfg = self.config
        if cfg is not None:
            model_file = str(cfg.models_dir / cfg.model) if cfg.model else ""
            result = await self.stub.LoadModel(
                pb.ModelOptions(Model=cfg.name, ModelPath=str(cfg.models_dir),
                                ModelFile=model_file, Options=list(cfg.options),
                                Threads=self.settings.backend_threads),
                timeout=self.settings.backend_load_timeout_s, metadata=self.metadata)
            if not result.success:
                raise BackendError(grpc.StatusCode.INTERNAL,
                                   f"model '{cfg.name}' failed to load: {result.message}")
            log.info("model %s loaded on %s", cfg.name, self.address)
        self.loaded = True

    def connect(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.BackendStub(self.channel)

    async def _start(self, kill: bool = False) -> None:
        await self.discard(kill)
        address = f"127.0.0.1:{free_port()}"
        # A token of the gateway's own unless one is configured: no other local process
        # can then call LoadModel on its backends and swap the model under it.
        self.token = self.settings.auth_token or secrets.token_urlsafe(32)
        # The backend logs at the gateway's level unless told otherwise.
        # The gateway's HTTP API keys are not the backend's to know.
        env = {"FACE_LOG_LEVEL": logging.getLevelName(logging.getLogger().level),
               **{k: v for k, v in os.environ.items() if k != "FACE_API_KEYS"},
               "LOCALAI_GRPC_AUTH_TOKEN": self.token}
        # Popen runs on the event loop's (main) thread: the parent-death signal set by
        # gateway.pool.launch follows the thread that started the child, so it must outlive it.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.pool.launch", str(os.getpid()),
             sys.executable, "-m", "backend", "--addr", address,
             "--workers", str(BACKEND_WORKERS)],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        self.loaded = False
        log.info("started backend for model %s: pid %d on %s",
                 self.model, self.process.pid, address)
        self.connect(address)
        timeout = self.settings.backend_start_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.process.poll() is not None:
                raise BackendError(grpc.StatusCode.UNAVAILABLE,
                                   f"the backend of model '{self.model}' exited with code "
                                   f"{self.process.returncode} while starting")
            if asyncio.get_running_loop().time() > deadline:
                await self.discard(kill=True)
                raise BackendError(grpc.StatusCode.UNAVAILABLE,
                                   f"the backend of model '{self.model}' did not start within "
                                   f"{timeout:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.channel.channel_ready(), 0.5)
                return

    async def discard(self, kill: bool = False) -> None:
        """Stops the process (if any; `kill`: at once, it is hung), then closes the channel."""
        channel, self.channel, self.stub = self.channel, None, None
        self.loaded = False
        if self.managed and self.process is not None:
            await _stop_process(self.process, kill)
        if channel is not None:
            # With the process gone, calls still in flight end at once with UNAVAILABLE
            # (503); closing without a grace period would cancel them instead (500).
            await channel.close(grace=CLOSE_GRACE_S)


def needs_load(exc: grpc.aio.AioRpcError) -> bool:
    """The backend lost its model (restarted) or serves another one (swapped by someone)."""
    return (exc.details() or "").startswith((NO_MODEL_LOADED, IDENTITY_MISMATCH))


async def _stop_process(process: subprocess.Popen, kill: bool = False) -> None:
    if process.poll() is None and kill:
        process.kill()  # hung (perhaps stopped): SIGTERM would wait for nothing
    elif process.poll() is None:
        process.terminate()  # the backend stops cleanly on SIGTERM
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), STOP_GRACE_S)
        except asyncio.TimeoutError:
            process.kill()
    await asyncio.to_thread(process.wait)
