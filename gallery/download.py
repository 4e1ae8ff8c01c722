"""Fetching one file by URI into the models folder: resumable, checked, atomic.

Bytes go to `<file>.part` beside the destination. A dropped connection keeps what
arrived and the next attempt (in this run or a later one) asks only for the rest
with an HTTP Range request. The file takes its real name only after its size and
SHA-256 match, so a half-downloaded or corrupt file is never mistaken for a
usable one.
"""
import hashlib
import os
import pathlib
import re
import sys
import time
import urllib.parse
import urllib.request

import httpx

CHUNK = 1 << 20
# Long reads are normal for large weights on slow links; only a stalled socket should fail.
TIMEOUT = httpx.Timeout(60.0, connect=15.0)


class DownloadError(Exception):
    """The bytes could not be fetched (network, HTTP status, missing source file)."""


class NotAtSource(DownloadError):
    """The source answered, but has no such file (HTTP 404/410, a missing local file)."""


class ChecksumError(Exception):
    """The bytes arrived but are not the expected file (size or SHA-256 differ)."""


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_path(uri: str) -> pathlib.Path | None:
    """The filesystem path a file:// URI names, None for other schemes."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "file":
        return None
    return pathlib.Path(urllib.request.url2pathname(parsed.path))


def read_bytes(source: str) -> bytes:
    """A small document (a gallery index) from a path, file:// or http(s) URL."""
    scheme = urllib.parse.urlparse(source).scheme
    try:
        if scheme in ("http", "https"):
            response = httpx.get(source, follow_redirects=True, timeout=TIMEOUT)
            response.raise_for_status()
            return response.content
        return (local_path(source) or pathlib.Path(source)).read_bytes()
    except (httpx.HTTPError, OSError) as exc:
        raise DownloadError(f"cannot read {source}: {exc}") from None


def fetch(uri: str, dest: pathlib.Path, sha256: str, size: int | None = None,
          attempts: int = 3) -> None:
    """Puts the file at `uri` at `dest`, verified; raises DownloadError or ChecksumError."""
    part = dest.with_name(dest.name + ".part")
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"{dest.name}: unsupported URL {uri!r} (use http(s):// or file://)")
    for attempt in range(1, attempts + 1):
        had = part.stat().st_size if part.exists() else 0
        try:
            if scheme == "file":
                _copy_local(local_path(uri), part, dest.name)
            else:
                _copy_http(uri, part, dest.name, size)
            break
        except httpx.TransportError as exc:
            # Retry only a transfer that was moving: an unreachable host stays unreachable.
            got = part.stat().st_size if part.exists() else 0
            if attempt == attempts or got <= had:
                raise DownloadError(f"{dest.name}: download from {uri} failed: {exc}") from None
            print(f"{dest.name}: connection lost at byte {got} ({exc}); resuming", file=sys.stderr)
    _check(part, dest.name, sha256, size)
    os.replace(part, dest)


def _copy_local(source: pathlib.Path, part: pathlib.Path, name: str) -> None:
    # A local copy is cheap to redo, so it always starts from the first byte.
    if not source.is_file():
        raise NotAtSource(f"{name}: not found at {source}")
    try:
        total = source.stat().st_size
        print(f"{name}: copying {source}", file=sys.stderr)
        with open(source, "rb") as src, open(part, "wb") as out:
            bar = Progress(name, total)
            while chunk := src.read(CHUNK):
                out.write(chunk)
                bar.advance(len(chunk))
            bar.close()
    except OSError as exc:
        raise DownloadError(f"{name}: cannot copy {source}: {exc.strerror or exc}") from None


def _copy_http(url: str, part: pathlib.Path, name: str, size: int | None) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        offset = 0  # longer than the file: not a prefix of it, start over
    if size is not None and offset == size:
        return  # an earlier run got every byte; the checks decide whether they are right
    # identity encoding: byte offsets must be offsets into the file, not into a gzip stream
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=TIMEOUT) as response:
        if response.status_code == 416 and offset:
            whole = response.headers.get("content-range", "").rpartition("/")[2]
            if whole == str(offset):
                return  # the part already holds the whole file
            part.unlink()  # longer than the file: not a prefix of it, start over
            return _copy_http(url, part, name, size)
        if response.status_code == 206:
            start = re.match(r"bytes (\d+)-", response.headers.get("content-range", ""))
            if not start or int(start.group(1)) != offset:
                raise DownloadError(f"{url}: server resumed at the wrong offset "
                                    f"({response.headers.get('content-range')!r}, wanted {offset})")
        elif response.status_code == 200:
            offset = 0  # no Range support: the whole file comes again
        elif response.status_code in (404, 410):
            raise NotAtSource(f"{name}: not found at {url} (HTTP {response.status_code})")
        else:
            raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
        length = response.headers.get("content-length", "")
        total = offset + int(length) if length.isdigit() else size
        resume = f" (resuming at byte {offset})" if offset else ""
        print(f"{name}: downloading {url}{resume}", file=sys.stderr)
        with open(part, "ab" if offset else "wb") as out:
            bar = Progress(name, total, offset)
            # chunks as they arrive: a buffered chunk would be lost when the connection drops
            for chunk in response.iter_raw():
                out.write(chunk)
                bar.advance(len(chunk))
            bar.close()


def _check(part: pathlib.Path, name: str, sha256: str, size: int | None) -> None:
    # A wrong part is useless for resuming too, so it goes: the next run starts clean.
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink()
        raise ChecksumError(f"{name}: size mismatch: expected {size} bytes, got {actual_size}")
    digest = sha256_of(part)
    if digest != sha256:
        part.unlink()
        raise ChecksumError(f"{name}: SHA-256 mismatch: expected {sha256}, got {digest}")


class Progress:
    """A transfer bar on stderr, redrawn at most ten times a second; drawn only on a terminal."""

    def __init__(self, label: str, total: int | None, done: int = 0):
        self.label, self.total, self.done = label, total, done
        self.visible = sys.stderr.isatty()
        self.drawn_at = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if self.visible and time.monotonic() - self.drawn_at >= 0.1:
            self._draw()

    def close(self) -> None:
        if self.visible:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self) -> None:
        self.drawn_at = time.monotonic()
        mb = self.done / 1e6
        if self.total:
            filled = int(30 * min(self.done / self.total, 1.0))
            line = (f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
                    f"{100 * self.done / self.total:3.0f}% {mb:.1f}/{self.total / 1e6:.1f} MB")
        else:
            line = f"{self.label} {mb:.1f} MB"
        sys.stderr.write("\r" + line)
        sys.stderr.flush()
