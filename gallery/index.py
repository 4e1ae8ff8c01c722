"""Model galleries: YAML lists of entries in LocalAI's gallery shape.

An entry names a model, its licence, the LoadModel options (`overrides`) and the
files to fetch. The built-in index ships in this package; galleries the user
names (a path, file:// or http(s) URL) are searched first, in the order given,
so a custom entry can stand in for a built-in one, e.g. to fetch from an
internal server.
"""
import dataclasses
import pathlib
import re
import urllib.parse
import urllib.request

import yaml

from gallery.download import DownloadError, local_path, read_bytes

BUILTIN_INDEX = pathlib.Path(__file__).with_name("index.yaml")

# Names become file and folder names in the models folder: no separators, no leading dot.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NON_COMMERCIAL = ("non-commercial", "noncommercial")


class GalleryError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class GalleryFile:
    filename: str
    sha256: str
    uri: str
    size: int | None = None

    @property
    def pack(self) -> str | None:
        """For a zip pack, the folder it unpacks into (the file name without .zip)."""
        return self.filename[:-4] if self.filename.lower().endswith(".zip") else None


@dataclasses.dataclass(frozen=True)
class GalleryEntry:
    name: str
    description: str
    license: str
    tags: tuple[str, ...]
    backend: str
    options: tuple[str, ...]
    model: str  # parameters.model
    files: tuple[GalleryFile, ...]
    source: str  # the gallery it came from

    @property
    def research_only(self) -> bool:
        licence = self.license.lower()
        return "research-only" in self.tags or any(word in licence for word in _NON_COMMERCIAL)


def check_name(value, what: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise GalleryError(f"{what} {value!r} is not a plain file name "
                           "(letters, digits, '.', '_', '+', '-'; no folders)")
    return value


def read_gallery(source: str) -> list[GalleryEntry]:
    try:
        doc = yaml.safe_load(read_bytes(source))
    except DownloadError as exc:
        raise GalleryError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise GalleryError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(doc, list):
        raise GalleryError(f"{source}: a gallery is a YAML list of entries")
    return [_parse_entry(item, source) for item in doc]


def _folder_of(source: str) -> pathlib.Path | None:
    """The folder of a gallery on disk (for its relative file: URIs); None for http(s)."""
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        return None
    return (local_path(source) or pathlib.Path(source)).resolve().parent


def resolve_uri(uri: str, folder: pathlib.Path | None) -> str:
    """A relative file: URI (`file:weights/det.onnx`, `file://./det.onnx`) made absolute
    against the gallery's folder; any other URI as it is."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "file" or folder is None:
        return uri
    if parsed.netloc in ("", "localhost"):
        if parsed.path.startswith("/"):
            return uri  # already absolute
        relative = parsed.path
    else:
        relative = parsed.netloc + parsed.path
    return (folder / urllib.request.url2pathname(relative)).resolve().as_uri()


def load_galleries(custom: list[str]) -> list[GalleryEntry]:
    """Entries of the custom galleries, then the built-in index; the first of a name wins."""
    entries: dict[str, GalleryEntry] = {}
    for source in [*custom, str(BUILTIN_INDEX)]:
        for entry in read_gallery(source):
            entries.setdefault(entry.name, entry)
    return list(entries.values())


def find_entry(entries: list[GalleryEntry], name: str) -> GalleryEntry:
    for entry in entries:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in entries)
    raise GalleryError(f"no gallery entry named {name!r} (known: {known})")


def _parse_entry(item, source: str) -> GalleryEntry:
    if not isinstance(item, dict):
        raise GalleryError(f"{source}: every gallery entry must be a mapping")
    name = check_name(item.get("name"), f"{source}: entry name")
    where = f"{source}: entry {name}"
    overrides = item.get("overrides") or {}
    options = overrides.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) and ":" in o for o in options):
        raise GalleryError(f"{where}: overrides.options must be a list of 'key:value' strings")
    tags = item.get("tags") or []
    if not isinstance(tags, list):
        raise GalleryError(f"{where}: tags must be a list")
    return GalleryEntry(
        name=name,
        description=str(item.get("description") or "").strip(),
        license=str(item.get("license") or ""),
        tags=tuple(str(t) for t in tags),
        backend=str(overrides.get("backend") or "insightface"),
        options=tuple(options),
        model=str((overrides.get("parameters") or {}).get("model") or name),
        files=tuple(_parse_file(f, where, _folder_of(source)) for f in item.get("files") or []),
        source=source,
    )


def _parse_file(item, where: str, folder: pathlib.Path | None) -> GalleryFile:
    if not isinstance(item, dict):
        raise GalleryError(f"{where}: every file must be a mapping with filename, sha256, uri")
    filename = check_name(item.get("filename"), f"{where}: file name")
    sha256 = item.get("sha256")
    # Unquoted hex of only digits would reach us as a number: the convention is quoted strings.
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
        raise GalleryError(f"{where}: {filename}: sha256 must be a quoted 64-digit hex string")
    uri = item.get("uri")
    if not isinstance(uri, str) or not uri:
        raise GalleryError(f"{where}: {filename}: uri is missing")
    size = item.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise GalleryError(f"{where}: {filename}: size must be a byte count")
    return GalleryFile(filename=filename, sha256=sha256.lower(), uri=resolve_uri(uri, folder),
                       size=size)
