"""Gateway configuration: one immutable object built by the CLI (or by tests)."""
import dataclasses
import os
import pathlib
import re

from .registry import check_dsn


def default_max_concurrency() -> int:
    """Image requests served at once: a few per core keeps every core busy without a
    queue that only adds memory and latency."""
    return max(8, 4 * (os.cpu_count() or 1))


STORE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BACKEND_SPEC = re.compile(r"^(?P<name>[^=\s]+)=(?P<addr>[^\s=]+:\d+)$")


@dataclasses.dataclass(frozen=True)
class Settings:
    models_dir: pathlib.Path
    data_dir: pathlib.Path
    default_model: str | None = None
    # model name -> "host:port" of each backend someone else runs (the model's pool)
    external_backends: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    backends_per_model: int = 1  # processes the gateway starts for a model without external ones
    backend_threads: int = 0  # LoadModel Threads for the backends; 0: the backend's default
    # "NAME" (a local store under data_dir) or "NAME=DSN" (sqlite:///path, postgresql://...)
    stores: tuple[str, ...] = ("local-store",)
    default_store: str | None = None  # None: local-store if configured, else the first
    # Local stores add an approximate index for models with at least this many records.
    ann_threshold: int | None = None
    # Register keeps each face's aligned crop (PNG) with it, so that `face-gateway reembed`
    # can rebuild the templates when the recognizer behind a model changes.
    keep_crops: bool = False
    allow_private_urls: bool = False
    # 48 MiB keeps a two-image verify body under the 50 MB gRPC message limit.
    max_body_bytes: int = 48 * 1024 * 1024
    # Two fetched images, base64-encoded, must also fit one 50 MB gRPC message.
    max_url_bytes: int = 16 * 1024 * 1024
    url_timeout_s: float = 10.0
    max_concurrency: int = dataclasses.field(default_factory=default_max_concurrency)
    # Request bodies held at once over all requests: a few largest bodies' worth.
    max_inflight_bytes: int = 256 * 1024 * 1024
    body_timeout_s: float = 60.0     # to receive a whole request body
    # A body's average rate after its first seconds: a slower one is cut off (408). 16 KiB/s
    # is a very slow uplink; a client a byte a second is an attack.
    min_body_rate: int = 16 * 1024
    header_timeout_s: float = 10.0   # from connect (or the last response) to complete headers
    keep_alive_timeout_s: float = 5.0
    backend_call_timeout_s: float = 60.0
    backend_start_timeout_s: float = 60.0
    backend_load_timeout_s: float = 300.0
    auth_token: str | None = None  # LOCALAI_GRPC_AUTH_TOKEN, given to and sent to backends
    # HTTP API keys (gateway/middleware/auth.py): FACE_API_KEYS entries and/or a keys file; both None: off.
    api_keys: str | None = dataclasses.field(default=None, repr=False)
    api_keys_file: pathlib.Path | None = None
    open_metrics: bool = False   # /metrics without a key
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")  # Host headers served

    def __post_init__(self):
        # One address is a pool of one (a plain string reads as such).
        object.__setattr__(self, "external_backends", {
            name: (addrs,) if isinstance(addrs, str) else tuple(addrs)
            for name, addrs in self.external_backends.items()})
        if self.backends_per_model < 1:
            raise ValueError("--backends-per-model must be at least 1")
        if self.backend_threads < 0:
            raise ValueError("--backend-threads must be 0 (the backend's default) or more")
        if not self.stores:
            raise ValueError("at least one store must be configured")
        specs = self.store_specs()
        if len(specs) != len(self.stores):
            raise ValueError("a store name is configured twice")
        if self.default_store is not None and self.default_store not in specs:
            raise ValueError(f"--default-store {self.default_store!r} is not a configured store "
                             f"(configured: {', '.join(specs)})")
        if self.ann_threshold is not None and self.ann_threshold < 1:
            raise ValueError("--ann-threshold must be at least 1")

    def store_specs(self) -> dict[str, str | None]:
        """{store name: DSN, or None for a local store under data_dir}."""
        return dict(parse_store_spec(spec) for spec in self.stores)


def parse_store_spec(spec: str) -> tuple[str, str | None]:
    """'NAME' -> (NAME, None); 'NAME=DSN' -> (NAME, DSN)."""
    name, sep, dsn = spec.strip().partition("=")
    if not STORE_NAME.match(name):
        raise ValueError(f"store name {name!r}: use letters, digits, '.', '_' or '-'")
    dsn = dsn.strip() if sep else None
    check_dsn(name, dsn)
    return name, dsn


def pools_from_specs(specs) -> dict[str, tuple[str, ...]]:
    """['a=h:1', 'a=h:2', 'b=h:3'] -> {'a': ('h:1', 'h:2'), 'b': ('h:3',)}: a repeated NAME
    adds to that model's pool."""
    pools: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        name, address = parse_backend_spec(spec)
        if address not in pools.get(name, ()):
            pools[name] = pools.get(name, ()) + (address,)
    return pools


def parse_backend_spec(spec: str) -> tuple[str, str]:
    """'NAME=HOST:PORT' -> (NAME, 'HOST:PORT')."""
    m = BACKEND_SPEC.match(spec.strip())
    if not m:
        raise ValueError(f"--backend {spec!r}: expected NAME=HOST:PORT")
    return m["name"], m["addr"]
