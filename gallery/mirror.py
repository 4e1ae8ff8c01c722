"""A local folder of weights to install from instead of the internet (--mirror).

Searched recursively, by file name first and then by SHA-256 (the same bytes under
another name, as another gallery or a download folder may have named them). Files
are hashed only when their size can match, and each at most once per install.
"""
import pathlib

from gallery.download import sha256_of
from gallery.index import GalleryFile


class Mirror:
    def __init__(self, root: pathlib.Path):
        self.root = root
        self._files: list[pathlib.Path] | None = None
        self._hashes: dict[pathlib.Path, str] = {}
        self._wrong: dict[str, list[pathlib.Path]] = {}  # file name -> same name, other bytes

    def files(self) -> list[pathlib.Path]:
        if self._files is None:
            self._files = sorted(p for p in self.root.rglob("*") if p.is_file())
        return self._files

    def find(self, file: GalleryFile) -> pathlib.Path | None:
        """The mirror's copy of `file` (its SHA-256 checked), or None."""
        named = [p for p in self.files() if p.name == file.filename]
        others = [p for p in self.files() if p.name != file.filename
                  and (file.size is None or p.stat().st_size == file.size)]
        for path in named + others:
            if self._sha256(path) == file.sha256:
                return path
        self._wrong[file.filename] = named
        return None

    def searched(self, file: GalleryFile) -> str:
        """Where find() looked, for an error message."""
        text = (f"not in the mirror {self.root} either ({len(self.files())} files searched "
                f"recursively by the name {file.filename} and by SHA-256 {file.sha256})")
        wrong = self._wrong.get(file.filename)
        if wrong:
            text += "; found " + ", ".join(f"{p} with SHA-256 {self._sha256(p)}" for p in wrong)
        return text

    def _sha256(self, path: pathlib.Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = sha256_of(path)
        return self._hashes[path]
