"""`face-gateway enroll DIR --model M`: registers a folder-per-person tree of photos.

DIR/<person>/<photo> becomes a face of one person named <person> (photos in deeper folders
count for their top folder; a folder's photos are registered one after another, the first
creating the person and the others added by its person_id), each labelled `source` = the photo's path relative to DIR, plus the
columns of an optional CSV that has a `file` column holding that same path. The
service is the source of truth for what is done: the enroller first pages through
the registry of the model and store and skips every photo whose `source` is there, so
a run that was interrupted resumes without duplicates and nothing is written beside
the photos. It talks to a running gateway over HTTP.

A folder is not trusted: symbolic links are not followed (a link could lead out of
it, to /etc/shadow), a file larger than --max-bytes is refused from its size before
a byte is read, names are printed with control characters escaped, the API key comes
from the environment or a file (never the command line, which `ps` shows), and a
run holds a lock on DIR so that a second run of the same folder waits for none and
stops at once instead of registering every photo twice.
"""
import argparse
import asyncio
import base64
import csv
import dataclasses
import fcntl
import os
import pathlib
import stat
import sys
import time

import httpx

from face_contract.quality import GATE_LEVELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
SOURCE_LABEL = "source"
PAGE_SIZE = 1000  # the registry listing's largest page
RETRIES = 5  # for 503s and refused connections: a backend or the gateway restarting
REDRAW_S = 0.2  # progress bar on a terminal
LOG_EVERY_S = 2.0  # progress lines when stderr is a file or pipe
# The gateway's 48 MiB body limit holds base64 text: 4/3 of the photo, plus the labels.
DEFAULT_MAX_BYTES = 36 * 1024 * 1024
# How register's 400 for a face below the quality gate begins its list of reasons.
GATE_REFUSAL = "below the quality gate "


def parse_args(argv) -> argparse.Namespace:
    # No abbreviations: `--api-key KEY` must not pass for `--api-key-file`.
    p = argparse.ArgumentParser(prog="face-gateway enroll", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("dir", type=pathlib.Path, help="folder with one sub-folder of photos per person")
    p.add_argument("--model", required=True, help="model to register with")
    p.add_argument("--store", default=None, help="registry store (default: the gateway's)")
    p.add_argument("--url", default=os.environ.get("FACE_URL", "http://127.0.0.1:8080"),
                   help="the gateway; env FACE_URL (default http://127.0.0.1:8080)")
    p.add_argument("--labels", type=pathlib.Path, default=None, metavar="CSV",
                   help="labels per photo: a CSV with a `file` column (paths relative to DIR); "
                        "its other non-empty columns become labels")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--api-key-file", type=pathlib.Path, default=None, metavar="FILE",
                   help="a file whose first line is the API key sent as x-api-key; or env "
                        "FACE_API_KEY (the key is never taken from the command line, where "
                        "every local user could read it)")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"larger photos are refused unread (default {DEFAULT_MAX_BYTES}, "
                        "what fits the gateway's default body limit)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--cluster", action="store_true",
                   help="DIR holds unlabelled photos (in any folders): group them by face into "
                        "people named unknown-N (gateway/enroll_cluster.py)")
    p.add_argument("--quality-gate", choices=GATE_LEVELS, default=None,
                   help="refuse faces below this gate (default: the model's quality_gate, "
                        "else medium); a refused photo is listed, not a failure of the run")
    p.add_argument("--refused-csv", type=pathlib.Path, default=pathlib.Path("enroll-refused.csv"),
                   metavar="CSV", help="where the photos refused by the quality gate are "
                                       "listed with their reasons (default enroll-refused.csv, "
                                       "written when any is refused)")
    args = p.parse_args(argv)
    if not args.dir.is_dir():
        p.error(f"{args.dir} is not a folder")
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    args.api_key = api_key(p, args.api_key_file)
    return args


def api_key(parser: argparse.ArgumentParser, key_file: pathlib.Path | None) -> str | None:
    """The first line of --api-key-file, else env FACE_API_KEY (never the command line)."""
    if key_file is None:
        return os.environ.get("FACE_API_KEY")
    try:
        return key_file.read_text().partition("\n")[0].strip()
    except OSError as exc:
        parser.error(f"cannot read --api-key-file: {exc}")


def shown(name: str) -> str:
    """A file name fit for a terminal: control characters (a newline, an escape sequence)
    and undecodable bytes are escaped, as repr() writes them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def is_image(path: pathlib.Path) -> bool:
    """A regular file (not a link to one) with an image suffix."""
    return path.suffix.lower() in IMAGE_SUFFIXES and stat.S_ISREG(path.lstat().st_mode)


def find_photos(root: pathlib.Path) -> list[str]:
    """Paths (relative to root, '/'-separated) of the images inside root's sub-folders;
    symbolic links, to files or folders, are not followed."""
    photos = []
    for person in root.iterdir():
        if person.is_symlink() or not person.is_dir():
            continue
        for folder, _, files in os.walk(person):  # followlinks=False: linked folders skipped
            photos += [(pathlib.Path(folder) / f).relative_to(root).as_posix()
                       for f in files if is_image(pathlib.Path(folder) / f)]
    return sorted(photos)


class Refused(Exception):
    """A photo that is not sent: its message says why."""


def read_photo(root: pathlib.Path, relative: str, max_bytes: int) -> bytes:
    """The photo's bytes, opened without following a link (one swapped in since the folder
    was listed is refused) and refused unread when its size is over max_bytes."""
    try:
        fd = os.open(root / relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise Refused(f"cannot open it ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Refused("not a regular file")
        if info.st_size > max_bytes:
            raise Refused(f"{info.st_size} bytes, over --max-bytes {max_bytes}")
        data = f.read(max_bytes + 1)  # a file that grew since: still bounded
    if len(data) > max_bytes:
        raise Refused(f"over --max-bytes {max_bytes}")
    return data


def lock_folder(root: pathlib.Path):
    """An open descriptor holding an exclusive lock on DIR (released when the process ends),
    or SystemExit when another run holds it. Nothing is written to the folder."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(f"face-gateway enroll: another enrolment of {shown(str(root))} is "
                         "running; run this one again once it has finished") from None
    return fd


def read_label_csv(path: pathlib.Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "file" not in (reader.fieldnames or []):
            raise SystemExit(f"face-gateway enroll: {path} has no `file` column")
        return {row["file"]: {key: value for key, value in row.items()
                              if key != "file" and key and value} for row in reader}


@dataclasses.dataclass
class Tally:
    total: int
    registered: int = 0
    skipped: int = 0
    no_face: list[str] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # photo, why
    failed: list[str] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return (self.registered + self.skipped + len(self.no_face) + len(self.refused)
                + len(self.failed))

    def summary(self) -> str:
        return (f"registered {self.registered}, skipped {self.skipped} (already registered), "
                f"no face {len(self.no_face)}, refused by the quality gate "
                f"{len(self.refused)}, failed {len(self.failed)} "
                f"of {self.total} images in {time.monotonic() - self.started:.1f} s")


class Progress:
    """A text bar with rate and ETA on stderr: redrawn in place on a terminal, a line every
    few seconds otherwise (logs, CI)."""

    def __init__(self, tally: Tally):
        self.tally = tally
        self.tty = sys.stderr.isatty()
        self.first_done = tally.done  # skipped photos are not work done at this run's rate
        self.shown_at = 0.0

    def show(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown_at < (REDRAW_S if self.tty else LOG_EVERY_S):
            return
        self.shown_at = now
        t = self.tally
        fraction = t.done / t.total if t.total else 1.0
        rate = (t.done - self.first_done) / max(now - t.started, 1e-9)
        left = t.total - t.done
        eta = time.strftime("%H:%M:%S", time.gmtime(left / rate)) if rate > 0 else "--:--:--"
        bar = "#" * int(30 * fraction)
        line = (f"enroll [{bar:<30}] {t.done}/{t.total} {fraction:4.0%} "
                f"{rate:6.1f} img/s ETA {eta}")
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


class Enroller:
    def __init__(self, args: argparse.Namespace, client: httpx.AsyncClient):
        self.args, self.client = args, client
        self.labels = read_label_csv(args.labels) if args.labels else {}

    def _scope(self) -> dict:
        return {"model": self.args.model, **({"store": self.args.store} if self.args.store else {}),
                **({"quality_gate": self.args.quality_gate} if self.args.quality_gate else {})}

    async def _request(self, method: str, route: str, **kw) -> httpx.Response:
        """The response, after retrying 503s and failed connections with a growing pause.

        A 503 or a refused connection means nothing was stored; any other transport error
        on a POST may come after the gateway stored the record, so it is not retried there
        (the next run finds the record and skips the photo)."""
        retried = (httpx.TransportError,) if method == "GET" else (httpx.ConnectError,)
        for attempt in range(RETRIES + 1):
            try:
                response = await self.client.request(method, route, **kw)
                if response.status_code != 503 or attempt == RETRIES:
                    return response
            except retried:
                if attempt == RETRIES:
                    raise
            await asyncio.sleep(min(2 ** attempt, 10))

    async def check_model(self) -> None:
        response = await self._request("GET", "/v1/models")
        _raise_for(response, "listing models")
        names = [m["id"] for m in response.json()["data"]]
        if self.args.model not in names:
            raise SystemExit(f"face-gateway enroll: model '{self.args.model}' is not served by "
                             f"{self.args.url} (models: {', '.join(names) or 'none'})")

    async def listed(self, route: str, what: str, **params):
        """Every item of a paged listing (of this model and store), page by page."""
        offset, total = 0, 1
        while offset < total:
            response = await self._request("GET", route, params={
                **self._scope(), **params, "limit": PAGE_SIZE, "offset": offset})
            _raise_for(response, what)
            page = response.json()
            total, items = page["total"], page["items"]
            if not items:
                break
            for item in items:
                yield item
            offset += len(items)

    async def registered_sources(self) -> dict[str, str]:
        """`source` label -> person_id of the records of this model and store."""
        return {i["labels"][SOURCE_LABEL]: i["person_id"]
                async for i in self.listed("/v1/face/registry", "listing the registry")
                if SOURCE_LABEL in i["labels"]}

    async def register(self, relative: str, tally: Tally, persons: dict[str, str],
                       person: str | None = None) -> None:
        """Registers one photo to the person named `person` (default: its top folder);
        persons: name -> person_id of the people this run registered to."""
        try:
            data = await asyncio.to_thread(read_photo, self.args.dir, relative,
                                           self.args.max_bytes)
        except Refused as exc:
            tally.failed.append(f"{relative}: {exc}")
            return
        folder = person or relative.split("/", 1)[0]
        person = {"person_id": persons[folder]} if folder in persons else {"name": folder}
        body = {**self._scope(), **person, "img": base64.b64encode(data).decode("ascii"),
                "labels": {**self.labels.get(relative, {}), SOURCE_LABEL: relative}}
        try:
            response = await self._request("POST", "/v1/face/register", json=body)
        except httpx.ConnectError:
            raise  # the gateway is gone: the run ends (and resumes when run again)
        except httpx.TransportError as exc:  # this request only (a timeout, a cut connection)
            tally.failed.append(f"{relative}: {type(exc).__name__} {exc}")
            return
        if response.status_code == 200:
            tally.registered += 1
            persons.setdefault(folder, response.json()["person_id"])
        elif response.status_code == 404 and "no face" in _message(response):
            tally.no_face.append(relative)
        elif response.status_code == 400 and GATE_REFUSAL in _message(response):
            tally.refused.append((relative, _message(response).partition(GATE_REFUSAL)[2]))
        else:
            tally.failed.append(f"{relative}: HTTP {response.status_code} {_message(response)}")


def write_refused(path: pathlib.Path, refused: list[tuple[str, str]]) -> None:
    """file,reasons: one row per photo the quality gate refused."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reasons"])
        writer.writerows(sorted(refused))


def _message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.status_code != 200:
        raise SystemExit(f"face-gateway enroll: {what} failed: HTTP {response.status_code} "
                         f"{_message(response)}")


def client_for(args: argparse.Namespace) -> httpx.AsyncClient:
    headers = {"x-api-key": args.api_key} if args.api_key else {}
    return httpx.AsyncClient(base_url=args.url, headers=headers, timeout=args.timeout,
                             limits=httpx.Limits(max_connections=args.concurrency))


async def enroll(args: argparse.Namespace) -> Tally:
    async with client_for(args) as client:
        enroller = Enroller(args, client)
        await enroller.check_model()
        started = time.monotonic()
        photos = find_photos(args.dir)
        done = await enroller.registered_sources()
        persons = {source.split("/", 1)[0]: person_id for source, person_id in done.items()}
        tally = Tally(total=len(photos), skipped=sum(p in done for p in photos), started=started)
        progress = Progress(tally)
        folders: dict[str, list[str]] = {}
        for photo in photos:
            if photo not in done:
                folders.setdefault(photo.split("/", 1)[0], []).append(photo)
        queue = list(folders.values())
        queue.reverse()  # pop() from the end takes them in order

        async def worker():  # one folder at a time: its first photo creates the person
            while queue:
                for photo in queue.pop():
                    await enroller.register(photo, tally, persons)
                    progress.show()

        try:
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        finally:
            progress.show(final=True)
        return tally


def main(argv=None) -> None:
    args = parse_args(argv)
    lock_folder(args.dir)  # held until the process ends
    loose = sum(is_image(path) for path in args.dir.iterdir())
    if loose and not args.cluster:
        print(f"face-gateway enroll: {loose} images directly in {args.dir} are left out: "
              f"only images in a folder per person are registered", file=sys.stderr)
    from .enroll_cluster import enroll_clusters  # it builds on this module
    try:
        tally = asyncio.run(enroll_clusters(args) if args.cluster else enroll(args))
    except KeyboardInterrupt:
        raise SystemExit("face-gateway enroll: interrupted; run it again to resume") from None
    except httpx.TransportError as exc:
        raise SystemExit(f"face-gateway enroll: cannot reach {args.url} ({exc}); run it again "
                         f"to resume") from None
    for relative in tally.no_face:
        print(f"no face: {shown(relative)}")
    for relative, why in sorted(tally.refused):
        print(f"refused: {shown(relative)}: {shown(why)}")
    if tally.refused:
        write_refused(args.refused_csv, tally.refused)
        print(f"refused photos and their reasons: {shown(str(args.refused_csv))}")
    for failure in tally.failed:
        print(f"failed: {shown(failure)}")
    print(tally.summary())
    if tally.failed:
        sys.exit(1)
