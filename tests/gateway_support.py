"""Gateway test helpers: model configs, gateway processes, a local image server, crafted images."""
import contextlib
import http.server
import os
import pathlib
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib

import uvicorn
import yaml

from bench.service import stop_process, wait_until_ok
from support import MODELS, REAL_PACK_OPTIONS, ROOT, free_port


def write_config(models_dir: pathlib.Path, name: str = "test-pack", options=None) -> pathlib.Path:
    """A hand-written model config, as a user would write for a custom pack."""
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "backend": "insightface",
                                    "options": list(REAL_PACK_OPTIONS if options is None
                                                    else options)}))
    return path


@contextlib.contextmanager
def gateway_process(models_dir, data_dir, *args: str, env: dict | None = None, stderr=None):
    """`python -m gateway` on a free port; yields (process, base URL); stops it (SIGTERM) after.

    `stderr` (a file) collects the log of the gateway and of the backends it starts."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port),
         "--models-dir", str(models_dir), "--data-dir", str(data_dir), "--log-level", "warning",
         *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, stderr=stderr)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(base_url, "/healthz", proc)
        yield proc, base_url
    finally:
        stop_process(proc)


@contextlib.contextmanager
def app_server(app):
    """Serves an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(base_url, "/healthz")
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /<name> serves files[name]; /redirect/<n>?to=URL answers 302; /slow sleeps;
    /encoded/<Content-Encoding>/<name> serves files[name] as stored, labelled with that encoding."""

    def do_GET(self):
        server = self.server
        path, _, query = self.path.partition("?")
        if path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", query.removeprefix("to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/slow":
            time.sleep(server.slow_s)
            self.send_response(200)
            self.end_headers()
        elif path.startswith("/chunked/"):  # no Content-Length: the cap is enforced while reading
            body = server.files[path.removeprefix("/chunked/")]
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 65536):
                piece = body[start:start + 65536]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path.startswith("/encoded/"):
            encoding, _, name = path.removeprefix("/encoded/").partition("/")
            body = server.files[name]
            self.send_response(200)
            self.send_header("Content-Encoding", urllib.parse.unquote(encoding))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path.lstrip("/") in server.files:
            body = server.files[path.lstrip("/")]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
        server.hits.append(path)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def image_server(files: dict[str, bytes], host: str = "127.0.0.1", slow_s: float = 3.0):
    """A local HTTP server for image-URL tests; yields it (base URL in .url, requests in .hits)."""
    server = http.server.ThreadingHTTPServer((host, 0), _Handler)
    server.files, server.hits, server.slow_s = files, [], slow_s
    server.daemon_threads = True
    server.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    """True once `pid` has exited (a zombie nobody reaped counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (no pixel data): pixel limits read headers."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def readme_block(lang: str, containing: str) -> str:
    """The first ```lang block of README.md that contains `containing`."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return next(block for block in blocks if containing in block)


def link_real_files(folder: pathlib.Path, names) -> None:
    """Links the ../shared/models files of these names into `folder` (flat, by name)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).symlink_to(next(MODELS.rglob(name)))


def readme_gallery(folder: pathlib.Path) -> pathlib.Path:
    """The README's custom gallery (Offline set-up) as `folder`/gallery.yaml beside the real
    files it names; returns its path."""
    gallery = readme_block("yaml", "name: local-pack")
    link_real_files(folder, [f["filename"] for f in yaml.safe_load(gallery)[0]["files"]])
    (folder / "gallery.yaml").write_text(gallery)
    return folder / "gallery.yaml"
