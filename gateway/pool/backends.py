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

import grpc
from PIL import Image

from face_contract.errors import InvalidInput, NotFound
from face_contract.images import check_limits
from face_contract.rpc import backend_pb2 as pb
from gallery.configs import ModelConfig, load_model_configs

from .members import BackendError, Member, needs_load
from ..settings import Settings

log = logging.getLogger("gateway.backends")

WATCH_INTERVAL_S = 1.0
MAX_CHECK_BACKOFF_S = 30.0

# Recognizer defaults of PROTOCOL.md for configs without `verify_threshold`.
PACK_THRESHOLDS = {"buffalo_l": 0.35, "buffalo_m": 0.35, "antelopev2": 0.35,
                   "buffalo_s": 0.40, "buffalo_sc": 0.40}
ENGINE_THRESHOLDS = {"opencv": 0.50, "onnx_direct": 0.50}
FALLBACK_THRESHOLD = 0.35


def default_threshold(config: ModelConfig | None) -> float:
    if config is None:
        return FALLBACK_THRESHOLD
    explicit = config.number("verify_threshold")
    if explicit is not None:
        return explicit
    if config.option("engine") in ENGINE_THRESHOLDS:
        return ENGINE_THRESHOLDS[config.option("engine")]
    return PACK_THRESHOLDS.get(config.option("model_pack", "buffalo_l"), FALLBACK_THRESHOLD)


@dataclasses.dataclass
class Pool:
    name: str
    members: list[Member]

    def pick(self, exclude: list[Member]) -> Member | None:
        """The usable member with the fewest calls in flight (ties: the least used so far)."""
        usable = [m for m in self.members if m.usable and m not in exclude]
        return min(usable, key=lambda m: (m.in_flight, m.calls), default=None)


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

    async def call(self, name: str, method: str, request, large: dict | None = None):
        """`method` on the least busy backend of the model's pool, with a deadline; retried once
        on another member when the first is unavailable, or after a reload when it lost the model.
        `large`: the request's image fields, see Member.call."""
        pool = self._pool(name)
        exclude: list[Member] = []
        for attempt in (1, 2):
            member = await self._member(pool, exclude)
            try:
                return await member.call(method, request, large)
            except grpc.aio.AioRpcError as exc:
                error = member.failure(exc, method)
                if attempt == 2:
                    raise error from None
                if exc.code() == grpc.StatusCode.UNAVAILABLE and pool.pick([member]) is not None:
                    log.warning("model %s: backend %s unavailable; retrying on another",
                                name, member.address)
                    exclude = [member]
                elif needs_load(exc):  # retried on this member once reloaded, or another
                    log.warning("model %s: backend %s answered %r; loading the model again",
                                name, member.address, exc.details())
                else:
                    raise error from None

    def _pool(self, name: str) -> Pool:
        if name not in self._pools:
            config = self.config(name)
            addresses = self.settings.external_backends.get(name)
            if addresses:
                members = [Member(name, address, config, self.settings, token=self.settings.auth_token)
                           for address in addresses]
            else:
                members = [Member(name, None, config, self.settings)
                           for _ in range(self.settings.backends_per_model)]
            self._pools[name] = Pool(name, members)
        return self._pools[name]

    async def _member(self, pool: Pool, exclude: list) -> Member:
        """A usable member not in `exclude`; when none is, brings the others up and waits."""
        member = pool.pick(exclude)
        if member is not None:
            return member
        candidates = [m for m in pool.members if m not in exclude]
        results = await asyncio.gather(*(m.ensure() for m in candidates),
                                       return_exceptions=True)
        member = pool.pick(exclude)
        if member is not None:
            return member
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        raise BackendError(grpc.StatusCode.UNAVAILABLE,
                           f"no backend of model '{pool.name}' is available; retry shortly")

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
                await asyncio.gather(*(m.call("Detect", pb.DetectOptions(src=src))
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
                await member.health()
                return
            except grpc.aio.AioRpcError as exc:
                log.warning("backend %s of model %s failed a health check (%s); out of the pool",
                            member.address, member.model, exc.code().name)
                member.out = True
        try:  # restart, reconnect or reload it
            await member.ensure()
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
            member.connect(member.external_address)
        try:
            await member.health()
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
        # One out of the pool may be hung: it would only sit out the SIGTERM grace period.
        await asyncio.gather(*(m.discard(kill=m.out) for pool in self._pools.values()
                               for m in pool.members))
