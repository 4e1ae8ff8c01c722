"""Backend pools per model, supervised, and the gRPC calls the routes make on them.

Each model is served by a pool of backends. For an installed model (a YAML config in
the models folder) the gateway starts `--backends-per-model` processes of
`python -m backend` on free loopback ports on first use, each with its own bearer
token, and sends them LoadModel; `--backend NAME=HOST:PORT` (repeatable per NAME)
makes the pool of backends someone else runs instead. A call goes to the member with
the fewest calls in flight and has a deadline. Every backend call is a pure function
of its input, so one that fails with UNAVAILABLE is tried once more on another member,
and one answered "wrong model" is retried after loading the model again. A watcher
health-checks every member with a short deadline: a dead or hung member is taken out
of the pool, restarted when the gateway runs it, and put back once it answers.
"""
import asyncio
import base64
import contextlib
import dataclasses
import io
import logging
import os
import secrets
import socket
import subprocess
import sys

import grpc
from PIL import Image

from face_contract.errors import (IDENTITY_MISMATCH, NO_MODEL_LOADED, FaceError, InvalidInput,
                                  NotFound)
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
# Health is answered at once by a live backend, however busy: a short deadline finds hung ones.
HEALTH_TIMEOUT_S = 3.0
WATCH_INTERVAL_S = 1.0
MAX_CHECK_BACKOFF_S = 30.0
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


@dataclasses.dataclass(eq=False)
class Member:
    """One backend of a model's pool: a process the gateway runs, or an address it was given."""
    model: str
    external_address: str | None  # None: the gateway runs this backend itself
    config: ModelConfig | None
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


@dataclasses.dataclass
class Pool:
    name: str
    members: list[Member]

    def pick(self, exclude: list[Member]) -> Member | None:
        """The usable member with the fewest calls in flight (ties: the least used so far)."""
        usable = [m for m in self.members if m.usable and m not in exclude]
        return min(usable, key=lambda m: (m.in_flight, m.calls), default=None)


def _needs_load(exc: grpc.aio.AioRpcError) -> bool:
    """The backend lost its model (restarted) or serves another one (swapped by someone)."""
    return (exc.details() or "").startswith((NO_MODEL_LOADED, IDENTITY_MISMATCH))


class Backends:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._configs = load_model_configs(settings.models_dir)
        self._pools: dict[str, Pool] = {}
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

    def threshold(self, name: str) -> float:
        return default_threshold(self.config(name))

    def describe(self) -> list[dict]:
        out = []
        for name in self.names():
            members = self._pools[name].members if name in self._pools else []
            item = {"id": name, "object": "model",
                    "loaded": any(m.loaded and m.running for m in members)}
            first = next((m for m in members if m.address), None)
            if first is not None and first.managed and first.running:
                item["pid"] = first.process.pid
            if first is not None:
                item["address"] = first.address
            if any(m.address for m in members):
                item["backends"] = [{
                    "address": m.address, "pid": m.process.pid if m.managed and m.running else None,
                    "in_pool": m.usable, "in_flight": m.in_flight, "calls": m.calls,
                    "starts": m.starts if m.managed else None} for m in members]
            out.append(item)
        return out

    # -- calls ----------------------------------------------------------------

    async def call(self, name: str, method: str, request):
        """`method` on the least busy backend of the model's pool, with a deadline; retried once
        on another member when the first is unavailable, or after a reload when it lost the model."""
        pool = self._pool(name)
        exclude: list[Member] = []
        for attempt in (1, 2):
            member = await self._member(pool, exclude)
            try:
                return await self._call_member(member, method, request)
            except grpc.aio.AioRpcError as exc:
                error = self._failure(member, exc, method)
                if attempt == 2:
                    raise error from None
                if exc.code() == grpc.StatusCode.UNAVAILABLE and pool.pick([member]) is not None:
                    log.warning("model %s: backend %s unavailable; retrying on another",
                                name, member.address)
                    exclude = [member]
                elif _needs_load(exc):  # retried on this member once reloaded, or another
                    log.warning("model %s: backend %s answered %r; loading the model again",
                                name, member.address, exc.details())
                else:
                    raise error from None

    async def _call_member(self, member: Member, method: str, request):
        request.ModelIdentity = member.identity
        member.in_flight += 1
        member.calls += 1
        try:
            return await getattr(member.stub, method)(
                request, timeout=self.settings.backend_call_timeout_s, metadata=member.metadata)
        finally:
            member.in_flight -= 1

    def _failure(self, member: Member, exc: grpc.aio.AioRpcError, what: str) -> BackendError:
        """The error a caller sees; marks the member for a re-check when the failure is its own."""
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            member.out = True
            return BackendError(code, f"the backend of model '{member.model}' is unavailable "
                                      f"({exc.details()}); retry shortly")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            member.out = True  # hung or overloaded: the watcher's health check decides
            return BackendError(code, f"the backend of model '{member.model}' did not "
                                      f"answer {what} in time; retry shortly")
        if _needs_load(exc):
            member.loaded = False
        return BackendError(code, exc.details() or code.name)

    def _pool(self, name: str) -> Pool:
        if name not in self._pools:
            config = self.config(name)
            addresses = self.settings.external_backends.get(name)
            if addresses:
                members = [Member(name, address, config, token=self.settings.auth_token)
                           for address in addresses]
            else:
                members = [Member(name, None, config)
                           for _ in range(self.settings.backends_per_model)]
            self._pools[name] = Pool(name, members)
        return self._pools[name]

    async def _member(self, pool: Pool, exclude: list) -> Member:
        """A usable member not in `exclude`; when none is, brings the others up and waits."""
        member = pool.pick(exclude)
        if member is not None:
            return member
        candidates = [m for m in pool.members if m not in exclude]
        results = await asyncio.gather(*(self._ensure(m) for m in candidates),
                                       return_exceptions=True)
        member = pool.pick(exclude)
        if member is not None:
            return member
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        raise BackendError(grpc.StatusCode.UNAVAILABLE,
                           f"no backend of model '{pool.name}' is available; retry shortly")

    async def _ensure(self, member: Member) -> None:
        """Brings a member up (start, connect, health, load) unless it is usable already."""
        member.wanted = True
        async with member.lock:  # one start / load per member; other callers wait for it
            if not member.usable:
                await self._bring_up(member)

    async def _bring_up(self, member: Member) -> None:
        if member.managed and not member.running:
            await self._start(member)
        elif member.channel is None:
            self._connect(member, member.external_address)
        step = "Health"
        try:
            try:
                await self._health(member)
            except grpc.aio.AioRpcError:
                if not member.managed:
                    raise
                log.warning("backend of model %s (pid %d) does not answer health checks; "
                            "restarting it", member.model, member.process.pid)
                await self._start(member, kill=True)
                await self._health(member)
            if member.out and member.loaded:  # alive again: is the model still loaded?
                step = "Status"
                status = await member.stub.Status(pb.HealthMessage(), timeout=HEALTH_TIMEOUT_S,
                                                  metadata=member.metadata)
                member.loaded = status.state == pb.StatusResponse.READY
            if not member.loaded:
                step = "LoadModel"
                await self._load(member)
        except grpc.aio.AioRpcError as exc:
            raise self._failure(member, exc, step) from None
        member.out = False

    async def _health(self, member: Member) -> None:
        await member.stub.Health(pb.HealthMessage(), timeout=HEALTH_TIMEOUT_S,
                                 metadata=member.metadata)

    async def _load(self, member: Member) -> None:
        cfg = member.config
        if cfg is not None:
            model_file = str(cfg.models_dir / cfg.model) if cfg.model else ""
            result = await member.stub.LoadModel(
                pb.ModelOptions(Model=cfg.name, ModelPath=str(cfg.models_dir),
                                ModelFile=model_file, Options=list(cfg.options),
                                Threads=self.settings.backend_threads),
                timeout=self.settings.backend_load_timeout_s, metadata=member.metadata)
            if not result.success:
                raise BackendError(grpc.StatusCode.INTERNAL,
                                   f"model '{cfg.name}' failed to load: {result.message}")
            log.info("model %s loaded on %s", cfg.name, member.address)
        member.loaded = True

    def _connect(self, member: Member, address: str) -> None:
        member.address = address
        member.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        member.stub = pb_grpc.BackendStub(member.channel)

    async def _start(self, member: Member, kill: bool = False) -> None:
        await self._discard(member, kill)
        address = f"127.0.0.1:{free_port()}"
        # A token of the gateway's own unless one is configured: no other local process
        # can then call LoadModel on its backends and swap the model under it.
        member.token = self.settings.auth_token or secrets.token_urlsafe(32)
        # The backend logs at the gateway's level unless told otherwise.
        env = {"FACE_LOG_LEVEL": logging.getLevelName(logging.getLogger().level), **os.environ,
               "LOCALAI_GRPC_AUTH_TOKEN": member.token}
        # Popen runs on the event loop's (main) thread: the parent-death signal set by
        # gateway.launch follows the thread that started the child, so it must outlive it.
        member.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.launch", str(os.getpid()),
             sys.executable, "-m", "backend", "--addr", address],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        member.starts += 1
        member.loaded = False
        log.info("started backend for model %s: pid %d on %s",
                 member.model, member.process.pid, address)
        self._connect(member, address)
        deadline = asyncio.get_running_loop().time() + self.settings.backend_start_timeout_s
        while True:
            if member.process.poll() is not None:
                raise BackendError(grpc.StatusCode.UNAVAILABLE,
                                   f"the backend of model '{member.model}' exited with code "
                                   f"{member.process.returncode} while starting")
            if asyncio.get_running_loop().time() > deadline:
                await self._discard(member, kill=True)
                raise BackendError(grpc.StatusCode.UNAVAILABLE,
                                   f"the backend of model '{member.model}' did not start within "
                                   f"{self.settings.backend_start_timeout_s:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(member.channel.channel_ready(), 0.5)
                return

    async def _discard(self, member: Member, kill: bool = False) -> None:
        """Stops the process (if any; `kill`: at once, it is hung), then closes the channel."""
        channel, member.channel, member.stub = member.channel, None, None
        member.loaded = False
        if member.managed and member.process is not None:
            await _stop_process(member.process, kill)
        if channel is not None:
            # With the process gone, calls still in flight end at once with UNAVAILABLE
            # (503); closing without a grace period would cancel them instead (500).
            await channel.close(grace=CLOSE_GRACE_S)

    # -- supervision ----------------------------------------------------------

    def start_watching(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    def preload(self, name: str) -> None:
        """Starts and loads a model's backends now, and sends each one image, so that the first
        request is not the slow one (the first image check and call each cost milliseconds)."""
        async def bring_up():
            try:
                pool = self._pool(name)
                await self._member(pool, exclude=[])
                jpeg = io.BytesIO()
                Image.new("RGB", (64, 64)).save(jpeg, "JPEG")
                check_limits(jpeg.getvalue(), "warm-up image")
                src = base64.b64encode(jpeg.getvalue()).decode("ascii")
                await asyncio.gather(*(self._call_member(m, "Detect", pb.DetectOptions(src=src))
                                       for m in pool.members if m.usable))
            except Exception as exc:  # the first request retries and reports it
                log.error("preloading model %s failed: %s", name, exc)
        self._preloader = asyncio.create_task(bring_up())

    async def _watch(self) -> None:
        """Checks every member a call has asked for, each second: restarts one that died, takes
        one that does not answer a health check out of the pool (restarting it if the gateway
        runs it) and puts it back once it answers again."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            members = [m for pool in list(self._pools.values()) for m in pool.members
                       if m.wanted and not m.lock.locked()]
            await asyncio.gather(*(self._check(m) for m in members))

    async def _check(self, member: Member) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < member.next_check:
            return
        if member.managed and not member.running:
            log.warning("backend of model %s (pid %d) exited with code %s; restarting",
                        member.model, member.process.pid, member.process.returncode)
            member.out = True
        elif member.usable:
            try:
                await self._health(member)
                return
            except grpc.aio.AioRpcError as exc:
                log.warning("backend %s of model %s failed a health check (%s); out of the pool",
                            member.address, member.model, exc.code().name)
                member.out = True
        try:  # restart, reconnect or reload it
            await self._ensure(member)
            member.failures = 0
        except Exception as exc:  # the watch goes on, backing off; a request may retry sooner
            member.failures += 1
            member.next_check = loop.time() + min(2 ** member.failures, MAX_CHECK_BACKOFF_S)
            log.error("bringing back the backend %s of model %s failed: %s",
                      member.address, member.model, exc)

    async def probe(self) -> dict[str, str]:
        """State of every model's pool: 'ok', 'idle', 'degraded: ...' or the failure."""
        states = {}
        for name in self.names():
            members = self._pool(name).members
            member_states = await asyncio.gather(*(self._probe(m) for m in members))
            healthy = member_states.count("ok")
            if len(set(member_states)) == 1:
                states[name] = member_states[0]
            elif healthy:
                states[name] = f"degraded: {healthy} of {len(members)} backends ok"
            else:
                states[name] = "; ".join(sorted(set(member_states)))
        return states

    async def _probe(self, member: Member) -> str:
        if member.managed and member.process is None:
            return "idle"  # started on first use
        if not member.running:
            return f"exited with code {member.process.returncode}"
        if not member.loaded:
            return "loading"
        if member.channel is None:
            self._connect(member, member.external_address)
        try:
            await self._health(member)
            return "ok"
        except grpc.aio.AioRpcError as exc:
            return f"unreachable: {exc.code().name} {exc.details()}"

    def starts(self) -> dict[str, int]:
        return {name: sum(m.starts for m in pool.members)
                for name, pool in self._pools.items() if pool.members[0].managed}

    def calls(self) -> dict[tuple[str, str], int]:
        """Calls sent per (model, backend address)."""
        return {(name, m.address): m.calls for name, pool in self._pools.items()
                for m in pool.members if m.address}

    async def close(self) -> None:
        for task in (self._watcher, self._preloader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(*(self._discard(m) for pool in self._pools.values()
                               for m in pool.members))


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
