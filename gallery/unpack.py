"""Unpacking a zip model pack flat into `<models-dir>/<pack>/`.

Upstream packs differ: some zips hold the .onnx files at the top, some inside a
folder named after the pack. Both end up as `<pack>/<file>`, so the backend finds
a pack the same way whatever zip it came from. Files are extracted into a hidden
staging folder first, so a broken archive leaves no partial pack behind.
"""
import os
import pathlib
import shutil
import tempfile
import zipfile

CHUNK = 1 << 20


class UnpackError(Exception):
    pass


def unpack_pack(archive: pathlib.Path, pack_dir: pathlib.Path) -> list[str]:
    """Extracts every file of `archive` into `pack_dir` by its base name; returns those names."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and not _is_junk(m.filename)]
            names = [pathlib.PurePosixPath(m.filename).name for m in members]
            if not members:
                raise UnpackError(f"{archive.name}: the zip holds no files")
            if len(set(names)) != len(names):
                raise UnpackError(f"{archive.name}: two files share a name; cannot unpack it flat")
            staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{pack_dir.name}.", dir=pack_dir.parent))
            try:
                for member, name in zip(members, names):
                    # Reading to the end makes zipfile check the member's CRC.
                    with zf.open(member) as src, open(staging / name, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                pack_dir.mkdir(exist_ok=True)
                for name in names:
                    os.replace(staging / name, pack_dir / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        raise UnpackError(f"{archive.name}: not a readable zip: {exc}") from None
    return names


def _is_junk(member: str) -> bool:
    # macOS archivers add __MACOSX/ resource forks and .DS_Store files next to the real ones.
    parts = pathlib.PurePosixPath(member).parts
    return "__MACOSX" in parts or parts[-1].startswith(".")
