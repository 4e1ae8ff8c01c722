"""Who may call the gateway: API keys with a read-only or read-write scope, and the Host check.

One pure-ASGI middleware runs before the body is read, so an unauthenticated client
cannot make the gateway buffer anything. Keys are kept only as SHA-256 digests and
every request compares its key against all of them (hmac.compare_digest), so neither
the time taken nor the logs tell anything about a key.
"""
import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import pathlib
import re
import signal
import threading
import time

from ..errors import error_response
from ..page import PAGE_ASSETS

log = logging.getLogger("gateway.auth")

READ_ONLY, READ_WRITE = "ro", "rw"
MIN_KEY_LENGTH = 16
# A keys file is read once it has not changed for SETTLE_S, and taken if it did not change
# while it was read: one rewritten in place (by an editor, a script, `echo >`) is not caught
# half-way. Past SETTLE_TRIES the reload fails and the old keys stay.
SETTLE_S = 0.2
SETTLE_TRIES = 20
# Headers that say who is calling and to what: one of each, or the request is refused
# (which of two copies wins would otherwise be the server's choice, not the client's).
SINGLE_HEADERS = (b"host", b"x-api-key", b"authorization")
# Printable ASCII without spaces, ',' (separates FACE_API_KEYS) or '#' (starts a comment).
_KEY = re.compile(r"^[!-\"$-+\--~]+$")

WRITE_PATHS = frozenset({"/v1/face/register", "/v1/face/forget", "/v1/face/reembed"})
PEOPLE_PREFIX = "/v1/face/people/"  # GET reads a person; every other method changes people


def is_write(method: str, path: str) -> bool:
    return path in WRITE_PATHS or (path.startswith(PEOPLE_PREFIX) and method != "GET")


# Reachable without a key: the health probes, the web page with its assets, which must load
# so that it can ask the user for a key, and the API docs, which hold no data (Swagger's
# Authorize button carries the key to the calls it makes). The last prefix holds
# fastapi-offline's Swagger UI and ReDoc files.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico",
                        "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIXES = (PAGE_ASSETS + "/", "/static-offline-docs/")
METRICS_PATHS = frozenset({"/metrics"})
# Probes (Docker, Kubernetes) reach the gateway by whatever address they have, and the
# two answers hold nothing a DNS-rebinding page could use.
HOST_CHECK_EXEMPT = frozenset({"/healthz", "/readyz"})

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "an API key as `Authorization: Bearer <key>`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
               "description": "an API key as `x-api-key: <key>`"},
}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys(entries: list[str], source: str) -> dict[bytes, str]:
    """`key`, `key:rw` or `key:ro` entries -> {digest: scope}. Messages never quote a key."""
    keys: dict[bytes, str] = {}
    for number, entry in enumerate(entries, 1):
        key, colon, scope = entry.rpartition(":")
        if not colon:
            key, scope = entry, READ_WRITE
        where = f"{source} entry {number}"
        if scope not in (READ_ONLY, READ_WRITE):
            raise ValueError(f"{where}: the scope after ':' must be rw or ro")
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"{where}: a key needs at least {MIN_KEY_LENGTH} characters")
        if not _KEY.match(key):
            raise ValueError(f"{where}: a key is printable ASCII without spaces, ',' or '#'")
        digest = _digest(key)
        if keys.get(digest, scope) != scope:
            raise ValueError(f"{where}: the same key is listed as both rw and ro")
        keys[digest] = scope
    return keys


def read_keys_file(path: pathlib.Path) -> list[str]:
    """One key a line; blank lines and everything after '#' are ignored. The file is read
    when it has settled (OSError if it never does)."""
    for _ in range(SETTLE_TRIES):
        before = path.stat()
        age = time.time() - before.st_mtime
        if not 0 <= age < SETTLE_S:  # a future mtime (a skewed clock) counts as settled
            text = path.read_text()
            after = path.stat()
            if (after.st_mtime_ns, after.st_size, after.st_ino) == \
                    (before.st_mtime_ns, before.st_size, before.st_ino):
                lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
                return [line for line in lines if line]
        time.sleep(SETTLE_S)
    raise OSError(f"{path} kept changing for {SETTLE_TRIES * SETTLE_S:g} s")


class ApiKeys:
    """The keys of FACE_API_KEYS plus those of a keys file that SIGHUP reloads."""

    def __init__(self, inline: str | None, file: pathlib.Path | None):
        self.inline, self.file = inline, file
        # SIGHUPs in a burst: one reload runs at a time, and runs again if a signal came
        # while it ran, so the last signal is always followed by a read.
        self._lock = threading.Lock()
        self._running = self._pending = False
        self._keys = self._load()  # a bad key or an unreadable file stops the start
        if self.enabled and not self._keys:
            log.warning("API keys are on but none is configured: every request needs a key "
                        "and none will do until the keys file %s lists one", self.file)

    @property
    def enabled(self) -> bool:
        return self.inline is not None or self.file is not None

    def _load(self) -> dict[bytes, str]:
        inline = [e.strip() for e in (self.inline or "").split(",") if e.strip()]
        keys = parse_keys(inline, "FACE_API_KEYS")
        if self.file is not None:
            try:
                from_file = parse_keys(read_keys_file(self.file), f"API keys file {self.file}")
            except OSError as exc:
                raise ValueError(f"cannot read the API keys file: {exc}") from None
            for digest, scope in from_file.items():
                if keys.setdefault(digest, scope) != scope:
                    raise ValueError(f"a key of {self.file} is also in FACE_API_KEYS "
                                     "with the other scope")
        return keys

    def reload(self) -> None:
        """Re-reads the keys; a file that cannot be read or parsed leaves the old keys in force.
        Without a keys file there is nothing to re-read (the environment cannot change)."""
        if self.file is None:
            log.info("SIGHUP: no API keys file to reload")
            return
        with self._lock:
            self._pending = True
            if self._running:
                return
            self._running = True
        while True:
            with self._lock:
                if not self._pending:
                    self._running = False
                    return
                self._pending = False
            self._reload_once()

    def _reload_once(self) -> None:
        try:
            keys = self._load()
        except ValueError as exc:
            log.error("API keys not reloaded, the previous ones stay in force: %s", exc)
            return
        self._keys = keys  # one reference swap: requests see the old or the new set
        log.info("API keys reloaded from %s: %d keys", self.file, len(keys))

    def scope_of(self, key: str) -> str | None:
        digest, found = _digest(key), None
        for known, scope in self._keys.items():  # no early exit: timing tells nothing
            if hmac.compare_digest(digest, known):
                found = scope
        return found


def reload_on_sighup(keys: ApiKeys) -> None:
    """SIGHUP re-reads the keys file, on a thread so the event loop never waits on the disk."""
    signal.signal(signal.SIGHUP,
                  lambda *_: threading.Thread(target=keys.reload, daemon=True).start())


def _bare_host(host: str) -> str:
    """'Example.COM:8080' -> 'example.com'; '[::1]:80' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def is_loopback(host: str) -> bool:
    host = _bare_host(host)
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass
class Policy:
    keys: ApiKeys
    allowed_hosts: tuple[str, ...]  # '*' allows any Host header
    open_metrics: bool = False

    def is_open(self, path: str) -> bool:
        return (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
                or (self.open_metrics and path in METRICS_PATHS))

    def host_allowed(self, host: str) -> bool:
        allowed = {_bare_host(h) for h in self.allowed_hosts}
        return "*" in allowed or _bare_host(host) in allowed

    def check(self, method: str, path: str, raw_headers: list[tuple[bytes, bytes]]
              ) -> tuple[int, str, str | None]:
        """(status, message, the key's scope): 400 for a Host not served or a repeated Host or
        key header, 401 for no or an unknown key, 403 for a read-only key on a write route;
        status 0 lets it through."""
        names = [name for name, _ in raw_headers]
        for name in SINGLE_HEADERS:
            if names.count(name) > 1:
                return 400, f"the {name.decode()} header is sent more than once", None
        headers = dict(raw_headers)
        host = headers.get(b"host", b"").decode("latin-1")
        if path not in HOST_CHECK_EXEMPT and not self.host_allowed(host):
            return 400, (f"Host header {host[:100]!r} is not one this gateway serves: add it "
                         "to --allowed-hosts (FACE_ALLOWED_HOSTS) to reach the gateway by that "
                         "name"), None
        if not self.keys.enabled:
            return 0, "", None
        keys = presented_keys(headers)
        # Every key sent must be valid; the narrower scope wins when both headers carry one.
        scopes = {self.keys.scope_of(key) for key in keys}
        scope = None if not keys or None in scopes else min(scopes)  # "ro" < "rw"
        if self.is_open(path):
            return 0, "", scope
        if not keys:
            return 401, ("an API key is required: send it as 'Authorization: Bearer <key>' "
                         "or 'x-api-key: <key>'"), None
        if scope is None:
            return 401, "the API key is not valid", None
        if is_write(method, path) and scope != READ_WRITE:
            return 403, f"the API key is read-only: {path} needs a read-write key", scope
        return 0, "", scope


def presented_keys(headers: dict[bytes, bytes]) -> list[str]:
    """The keys of the x-api-key header and of a Bearer Authorization header (0, 1 or 2)."""
    keys = []
    if b"x-api-key" in headers:
        keys.append(headers[b"x-api-key"].decode("latin-1").strip())
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer":
        keys.append(token.strip())
    return keys


class AuthMiddleware:
    """Refuses a request before its body is read; records the key's scope for the routes."""

    def __init__(self, app, policy: Policy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, message, key_scope = self.policy.check(scope.get("method", "GET"), scope["path"],
                                                       scope["headers"])
        if status:
            response = error_response(status, message)
            if status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        scope.setdefault("state", {})["api_key_scope"] = key_scope
        await self.app(scope, receive, send)


def may_see_backends(request) -> bool:
    """Backend pids and addresses go to a read-write key; with keys off, to loopback callers
    only (a gateway run with --insecure on a public address does not publish them)."""
    policy: Policy = request.app.state.auth
    if policy.keys.enabled:
        return request.scope.get("state", {}).get("api_key_scope") == READ_WRITE
    return request.client is not None and is_loopback(request.client.host)


def document(app, policy: Policy) -> None:
    """Adds the key schemes and the 401/403 answers to the OpenAPI schema when keys are on."""
    if not policy.keys.enabled:
        return
    build = app.openapi
    error = {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}

    def openapi():
        schema = build()
        schema["components"].setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
        for path, operations in schema["paths"].items():
            if policy.is_open(path):
                continue
            for method, operation in operations.items():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                operation["responses"]["401"] = {"description": "no or unknown API key", **error}
                if is_write(method.upper(), path):
                    operation["responses"]["403"] = {"description": "a read-only API key",
                                                     **error}
        return schema
    app.openapi = openapi
