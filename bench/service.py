"""The service under test: `python -m gateway` on a free loopback port, and an HTTP client.

The gateway gets a temporary models folder holding one hand-written config for the
real pack and a temporary data folder, so a run never touches an installed registry.
"""
import contextlib
import dataclasses
import http.client
import json
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

import httpx

from gallery.configs import write_config
from gateway.pool.members import free_port

from .datasets import ROOT
from .pipeline import PACK_NAME, real_pack_options

START_TIMEOUT_S = 60.0
# The first call starts the backend and loads the model; later calls take milliseconds.
REQUEST_TIMEOUT_S = 300.0


@dataclasses.dataclass
class Reply:
    status: int
    body: dict
    seconds: float
    retry_after: str | None = None  # the Retry-After header, where one came

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error(self) -> str:
        return (self.body.get("error") or {}).get("message", "") if not self.ok else ""

    def expect(self, what: str, *allowed: int) -> "Reply":
        """Itself if 200 or one of the `allowed` failures; any other status ends the run."""
        if self.ok or self.status in allowed:
            return self
        raise SystemExit(f"{what}: HTTP {self.status} {self.error or self.body}")


class Service:
    """A keep-alive HTTP/1.1 connection per calling thread.

    http.client rather than httpx: on this machine httpx added about 6 ms to each
    40 KB verify POST (33 ms against 27 ms), which would be billed to the service.
    """

    def __init__(self, base_url: str, pid: int | None = None):
        self.base_url = base_url
        self.pid = pid  # the gateway process, when this run started it
        self._host, _, port = base_url.removeprefix("http://").partition(":")
        self._port = int(port)
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []

    def _connection(self) -> http.client.HTTPConnection:
        if not hasattr(self._local, "conn"):
            self._local.conn = http.client.HTTPConnection(self._host, self._port,
                                                          timeout=REQUEST_TIMEOUT_S)
            self._connections.append(self._local.conn)
        return self._local.conn

    def post(self, route: str, **fields) -> Reply:
        return self.post_raw(route, json.dumps(fields).encode())

    def post_raw(self, route: str, content: bytes) -> Reply:
        """POSTs a ready JSON body (latency loops serialise theirs once, outside the timing)."""
        return self.send("POST", route, content)

    def get(self, route: str) -> Reply:
        return self.send("GET", route)

    def send(self, method: str, route: str, content: bytes | None = None) -> Reply:
        for attempt in (1, 2):
            conn = self._connection()
            started = time.perf_counter()
            try:
                conn.request(method, route, body=content,
                             headers={"content-type": "application/json"} if content else {})
                response = conn.getresponse()
                data = response.read()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                # The server closed a connection that sat idle past its keep-alive timeout.
                conn.close()
                if attempt == 2:
                    raise
        seconds = time.perf_counter() - started
        return Reply(response.status, json.loads(data) if data else {}, seconds,
                     response.getheader("retry-after"))

    def close(self) -> None:
        for conn in self._connections:
            conn.close()


def wait_until_ok(base_url: str, route: str, proc: subprocess.Popen | None = None,
                  timeout: float = START_TIMEOUT_S) -> None:
    """Polls GET `route` until it answers 200; fails early if `proc` (the server) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} while starting")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}{route}", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{base_url}{route} did not answer 200 within {timeout:g} s")


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM (the gateway and the backend stop cleanly on it), SIGKILL after `grace` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_gateway(stores: tuple[str, ...] = ("local-store",), args: tuple[str, ...] = ()):
    """Starts the gateway (with extra command-line `args`) and waits until its default model's
    backends are loaded; yields a Service."""
    with tempfile.TemporaryDirectory(prefix="face-bench-") as tmp:
        models_dir, data_dir = pathlib.Path(tmp, "models"), pathlib.Path(tmp, "data")
        models_dir.mkdir()
        write_config(models_dir, PACK_NAME, backend="insightface", options=real_pack_options(),
                     model="", files=[], description="real test pack from ../shared/models")
        port = free_port()
        store_args = [arg for name in stores for arg in ("--store", name)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port),
             "--models-dir", str(models_dir), "--data-dir", str(data_dir),
             "--default-model", PACK_NAME, "--log-level", "warning", *store_args, *args],
            cwd=ROOT)
        base_url = f"http://127.0.0.1:{port}"
        service = None
        try:
            wait_until_ok(base_url, "/readyz", proc)  # the default model is loaded
            service = Service(base_url, proc.pid)
            yield service
        finally:
            if service is not None:
                service.close()
            stop_process(proc)  # the gateway stops its backend on SIGTERM
