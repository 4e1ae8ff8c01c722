"""`python -m gateway` / `face-gateway`: serve the /v1/face API with uvicorn.

Every option has an environment variable (FACE_*); a command-line option wins.
`face-gateway enroll DIR --model M ...` registers a folder of photos through a
running gateway instead (`face-gateway enroll --help`); `face-gateway reembed` rebuilds,
through a running gateway, the templates another recognizer made (`--help`).
"""
import argparse
import ctypes
import functools
import logging
import os
import pathlib
import sys

import uvicorn

from .app import create_app
from .middleware.auth import is_loopback, reload_on_sighup
from .middleware.httpserver import guarded_protocol
from .settings import Settings, default_max_concurrency, pools_from_specs
from .registry import StoreOpenError


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _env_option(parser: argparse.ArgumentParser, flag: str, env_name: str, kind, default,
                help: str) -> None:
    """An option whose default comes from an environment variable."""
    parser.add_argument(flag, type=kind, default=kind(os.environ.get(env_name, default)),
                        help=f"{help}; env {env_name}")


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="face-gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=env("FACE_HOST", "127.0.0.1"), help="env FACE_HOST")
    p.add_argument("--port", type=int, default=int(env("FACE_PORT", "8080")), help="env FACE_PORT")
    p.add_argument("--models-dir", type=pathlib.Path, default=env("FACE_MODELS_DIR", "models"),
                   help="folder of installed model configs (YAML); env FACE_MODELS_DIR")
    p.add_argument("--data-dir", type=pathlib.Path, default=env("FACE_DATA_DIR", "data"),
                   help="where the face registry lives; env FACE_DATA_DIR")
    p.add_argument("--default-model", default=env("FACE_DEFAULT_MODEL"),
                   help="model used when a request names none; env FACE_DEFAULT_MODEL")
    p.add_argument("--backend", action="append", dest="backends",
                   default=_env_list("FACE_BACKENDS"), metavar="NAME=HOST:PORT",
                   help="use an already running backend for model NAME (repeatable; a "
                        "repeated NAME adds to that model's pool); env FACE_BACKENDS, "
                        "comma-separated")
    p.add_argument("--backends-per-model", type=int,
                   default=int(env("FACE_BACKENDS_PER_MODEL", Settings.backends_per_model)),
                   help="backend processes the gateway starts per model (its pool); "
                        "env FACE_BACKENDS_PER_MODEL")
    p.add_argument("--backend-threads", type=int,
                   default=int(env("FACE_BACKEND_THREADS", Settings.backend_threads)),
                   help="onnxruntime threads of each backend it loads (LoadModel Threads; "
                        "0: the backend's default); env FACE_BACKEND_THREADS")
    p.add_argument("--store", action="append", dest="stores", default=None,
                   metavar="NAME[=DSN]",
                   help="a registry store (repeatable; default local-store): a bare NAME is a "
                        "local store under --data-dir, DSN sqlite:///path a local store there, "
                        "postgresql://... a pgvector store; env FACE_STORES, ';'-separated")
    p.add_argument("--default-store", default=env("FACE_DEFAULT_STORE"),
                   help="store used when a request names none (default local-store, else "
                        "the first); env FACE_DEFAULT_STORE")
    p.add_argument("--ann-threshold", type=int,
                   default=int(env("FACE_ANN_THRESHOLD", "0")) or None,
                   help="give a local store's model an approximate index (usearch HNSW, "
                        "re-ranked exactly) from this many records on; default off; "
                        "env FACE_ANN_THRESHOLD")
    p.add_argument("--keep-crops", action="store_true", default=_env_flag("FACE_KEEP_CROPS"),
                   help="register keeps each face's aligned 112x112 crop (PNG, in every "
                        "store) so that `face-gateway reembed` can rebuild the templates after "
                        "the recognizer changes; env FACE_KEEP_CROPS=1")
    p.add_argument("--allow-private-urls", action="store_true",
                   default=_env_flag("FACE_ALLOW_PRIVATE_URLS"),
                   help="let image URLs reach loopback, private and link-local addresses; "
                        "env FACE_ALLOW_PRIVATE_URLS=1")
    p.add_argument("--max-body-bytes", type=int,
                   default=int(env("FACE_MAX_BODY_BYTES", Settings.max_body_bytes)),
                   help="largest request body; env FACE_MAX_BODY_BYTES")
    p.add_argument("--max-url-bytes", type=int,
                   default=int(env("FACE_MAX_URL_BYTES", Settings.max_url_bytes)),
                   help="largest image fetched from a URL; env FACE_MAX_URL_BYTES")
    p.add_argument("--url-timeout", type=float,
                   default=float(env("FACE_URL_TIMEOUT", Settings.url_timeout_s)),
                   help="seconds allowed to fetch an image URL; env FACE_URL_TIMEOUT")
    limit = functools.partial(_env_option, p)
    limit("--max-concurrency", "FACE_MAX_CONCURRENCY", int, default_max_concurrency(),
          "image requests served at once; past it 503 + Retry-After (default 4 per core, "
          "at least 8)")
    limit("--max-inflight-bytes", "FACE_MAX_INFLIGHT_BYTES", int, Settings.max_inflight_bytes,
          "request body bytes held at once over all requests; past it 503 + Retry-After")
    limit("--body-timeout", "FACE_BODY_TIMEOUT", float, Settings.body_timeout_s,
          "seconds allowed to receive a request body (408 past it)")
    limit("--min-body-rate", "FACE_MIN_BODY_RATE", int, Settings.min_body_rate,
          "bytes a second a request body must average after its first 5 s, with no pause "
          "over 5 s (408 otherwise)")
    limit("--header-timeout", "FACE_HEADER_TIMEOUT", float, Settings.header_timeout_s,
          "seconds allowed from connecting to complete request headers (408 past it)")
    limit("--keep-alive-timeout", "FACE_KEEP_ALIVE_TIMEOUT", float,
          Settings.keep_alive_timeout_s, "seconds an idle keep-alive connection stays open")
    p.add_argument("--backend-timeout", type=float,
                   default=float(env("FACE_BACKEND_TIMEOUT", Settings.backend_call_timeout_s)),
                   help="deadline of each backend call in seconds; env FACE_BACKEND_TIMEOUT")
    p.add_argument("--api-keys-file", type=pathlib.Path, default=env("FACE_API_KEYS_FILE"),
                   help="API keys, one a line as KEY, KEY:rw or KEY:ro ('#' comments), "
                        "re-read on SIGHUP; env FACE_API_KEYS_FILE. Keys can also come from "
                        "env FACE_API_KEYS (comma-separated), never from the command line, "
                        "where every local user could read them")
    p.add_argument("--open-metrics", action="store_true", default=_env_flag("FACE_OPEN_METRICS"),
                   help="serve /metrics without an API key; env FACE_OPEN_METRICS=1")
    p.add_argument("--allowed-hosts", default=env("FACE_ALLOWED_HOSTS"), metavar="HOST,...",
                   help="Host headers answered, comma-separated, '*' for any (default: the "
                        "listen address, localhost, 127.0.0.1, ::1); env FACE_ALLOWED_HOSTS")
    p.add_argument("--insecure", action="store_true", default=_env_flag("FACE_INSECURE"),
                   help="listen on a non-loopback address without API keys; env FACE_INSECURE=1")
    p.add_argument("--log-level", default=env("FACE_LOG_LEVEL", "info"), help="env FACE_LOG_LEVEL")
    return p.parse_args(argv)


def _env_stores() -> list[str]:
    """FACE_STORES: 'NAME=DSN;NAME=DSN' (DSNs may hold commas); plain names may also be
    comma-separated."""
    value = os.environ.get("FACE_STORES", "")
    separator = ";" if ";" in value or "=" in value else ","
    return [item.strip() for item in value.split(separator) if item.strip()]


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        models_dir=args.models_dir, data_dir=args.data_dir, default_model=args.default_model,
        external_backends=pools_from_specs(args.backends),
        backends_per_model=args.backends_per_model, backend_threads=args.backend_threads,
        stores=tuple(args.stores or _env_stores() or ["local-store"]),
        default_store=args.default_store, ann_threshold=args.ann_threshold,
        keep_crops=args.keep_crops,
        allow_private_urls=args.allow_private_urls, max_body_bytes=args.max_body_bytes,
        max_url_bytes=args.max_url_bytes, url_timeout_s=args.url_timeout,
        max_concurrency=args.max_concurrency, max_inflight_bytes=args.max_inflight_bytes,
        body_timeout_s=args.body_timeout, min_body_rate=args.min_body_rate,
        header_timeout_s=args.header_timeout,
        keep_alive_timeout_s=args.keep_alive_timeout,
        backend_call_timeout_s=args.backend_timeout,
        auth_token=os.environ.get("LOCALAI_GRPC_AUTH_TOKEN") or None,
        api_keys=os.environ.get("FACE_API_KEYS", "").strip() or None,
        api_keys_file=args.api_keys_file,
        open_metrics=args.open_metrics,
        allowed_hosts=tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip())
        if args.allowed_hosts else (args.host, *Settings.allowed_hosts))


def refuse_public_without_keys(args: argparse.Namespace, settings: Settings) -> None:
    keys_on = settings.api_keys is not None or settings.api_keys_file is not None
    if not keys_on and not args.insecure and not is_loopback(args.host):
        raise SystemExit(
            f"face-gateway: refusing to listen on {args.host} without API keys: anyone who "
            "reaches the port could list, register and delete the faces in the registry. "
            "Set FACE_API_KEYS or --api-keys-file, or pass --insecure (FACE_INSECURE=1) if "
            "something in front of the gateway authenticates its callers.")


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_buffers_to_the_os() -> None:
    """Buffers of a megabyte or more (request bodies, base64 text, protobuf bytes) get their
    own mappings, given back to the OS when freed. glibc's default threshold rises after each
    large free until such buffers come from the heap and stay in the process: after one
    48 MiB request the gateway would keep its peak for good. No-op off glibc."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["enroll"]:
        from .enroll import main as enroll  # a client: none of the server's start-up
        return enroll(argv[1:])
    if argv[:1] == ["reembed"]:
        from .reembed import main as reembed  # a client of a running gateway, as enroll
        return reembed(argv[1:])
    args = parse_args(argv)
    return_large_buffers_to_the_os()
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from(args)
        refuse_public_without_keys(args, settings)
        app = create_app(settings)
    except (ValueError, StoreOpenError) as exc:
        raise SystemExit(f"face-gateway: {exc}") from None
    reload_on_sighup(app.state.auth.keys)  # also without a keys file: SIGHUP must not kill it
    # A bounded graceful shutdown: requests still running after it get cut off, and the
    # lifespan then stops the backends.
    uvicorn.run(app, host=args.host, port=args.port,
                log_level=args.log_level.lower(), timeout_graceful_shutdown=30,
                http=guarded_protocol(settings.header_timeout_s), ws="none",
                timeout_keep_alive=settings.keep_alive_timeout_s)


if __name__ == "__main__":
    main()
