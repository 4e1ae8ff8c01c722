"""Installing, checking and removing gallery models in a models folder.

Layout: `<models-dir>/<name>.yaml` plus the files flat beside it, zip packs
unpacked into `<models-dir>/<pack>/`. Models share a file of one name and the same bytes
(the liveness pair); a file whose name another installed model holds with other bytes goes
into `<models-dir>/<name>/` instead, and the options name it there, so files of different
content never collide and no installed model changes. A model counts as installed once its YAML
exists, and the YAML is written last, after every file is verified and in place:
an install that fails part-way leaves verified files (reused by the next try) and
resumable `.part` files, never a model that looks installed.
"""
import pathlib
import sys

from gallery.configs import ModelConfig, load_model_configs, read_config, write_config
from gallery.download import DownloadError, fetch, sha256_of
from gallery.index import GalleryEntry, GalleryFile, find_entry
from gallery.mirror import Mirror
from gallery.unpack import unpack_pack


class InstallError(Exception):
    pass


def licence_notice(entry: GalleryEntry) -> str:
    return (f"{entry.name} is licensed {entry.license or '(no licence stated)'}: its weights are for "
            "non-commercial research only. To accept this licence and install it, pass "
            "--accept-license or set FACE_MODELS_ACCEPT_LICENSE=1.")


def install(entry: GalleryEntry, models_dir: pathlib.Path, *, mirror: pathlib.Path | None = None,
            accept_license: bool = False, attempts: int = 3) -> ModelConfig:
    """Fetches, verifies and unpacks the entry's files, then writes its config."""
    # Before any byte is fetched: nobody downloads research-only weights by accident.
    if entry.research_only and not accept_license:
        raise InstallError(licence_notice(entry))
    models_dir.mkdir(parents=True, exist_ok=True)
    installed = load_model_configs(models_dir)
    moved = {f.filename: f"{entry.name}/{f.filename}"
             for f in entry.files if _collides(f, entry.name, installed)}
    records = []
    searched = Mirror(mirror) if mirror else None
    for file in entry.files:
        where = moved.get(file.filename, file.filename)
        dest = models_dir / where
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fetch_unless_present(file, dest, searched, attempts)
        if file.pack is None:
            records.append({"filename": where, "sha256": file.sha256, "uri": file.uri})
            continue
        for name in unpack_pack(dest, models_dir / file.pack):
            member = f"{file.pack}/{name}"
            records.append({"filename": member, "sha256": sha256_of(models_dir / member),
                            "unpacked_from": file.filename})
        dest.unlink()  # the unpacked files are what the model uses; the zip would double the space
    options = [_renamed(option, moved) for option in entry.options]
    path = write_config(models_dir, entry.name, backend=entry.backend, options=options,
                        model=moved.get(entry.model, entry.model), files=records,
                        license=entry.license, description=entry.description)
    return read_config(path)


def ensure(name: str, models_dir: pathlib.Path, entries: list[GalleryEntry], **install_options) -> bool:
    """Installs `name` unless it is installed with all its files present; True if it installed."""
    config = load_model_configs(models_dir).get(name)
    if config is not None and all((models_dir / f).exists() for f in config.files):
        return False
    install(find_entry(entries, name), models_dir, **install_options)
    return True


def remove(name: str, models_dir: pathlib.Path) -> tuple[list[str], list[str]]:
    """Removes the model's config, then its files that no other installed model uses.

    Returns (removed, kept) file names.
    """
    configs = load_model_configs(models_dir)
    config = configs.pop(name, None)
    if config is None:
        raise InstallError(f"{name} is not installed in {models_dir}")
    config.path.unlink()  # first: from here on it is not installed, whatever happens to its files
    in_use = set().union(*(other.used_paths() for other in configs.values()))
    root = models_dir.resolve()
    removed, kept = [], []
    for filename in config.files:
        path = (root / filename).resolve()
        if not path.is_relative_to(root) or path == root:
            kept.append(filename)  # a hand-written config may point anywhere; only our folder is ours
        elif path in in_use or any(parent in in_use for parent in path.parents):
            kept.append(filename)
        elif path.is_file():
            path.unlink()
            removed.append(filename)
            if path.parent != root and not any(path.parent.iterdir()):
                path.parent.rmdir()  # the pack folder, once its last file is gone
    return removed, kept


def verify(name: str, models_dir: pathlib.Path) -> list[str]:
    """Re-hashes the model's files; returns one line per file, raises InstallError on any problem."""
    config = load_model_configs(models_dir).get(name)
    if config is None:
        raise InstallError(f"{name} is not installed in {models_dir}")
    report, problems = [], []
    for filename in config.files:
        path = models_dir / filename
        expected = config.file_sha256.get(filename)
        if not path.is_file():
            problems.append(f"{filename}: missing")
        elif expected is None:
            report.append(f"{filename}: present (no SHA-256 recorded to check)")
        elif (actual := sha256_of(path)) != expected:
            problems.append(f"{filename}: SHA-256 mismatch: expected {expected}, got {actual}")
        else:
            report.append(f"{filename}: ok")
    if problems:
        raise InstallError(f"{name} failed verification: " + "; ".join(problems))
    return report


def _collides(file: GalleryFile, name: str, installed: dict[str, ModelConfig]) -> bool:
    """Whether the file goes into the model's own folder: another installed model records
    its name with other bytes, or this model's earlier install put it there."""
    own = installed.get(name)
    if own is not None and f"{name}/{file.filename}" in own.files:
        return True
    return any(other.file_sha256.get(file.filename, file.sha256) != file.sha256
               for other in installed.values() if other.name != name)


def _renamed(option: str, moved: dict[str, str]) -> str:
    key, colon, value = option.partition(":")
    return f"{key}{colon}{moved[value.strip()]}" if value.strip() in moved else option


def _fetch_unless_present(file: GalleryFile, dest: pathlib.Path, mirror: Mirror | None,
                          attempts: int) -> None:
    if dest.is_file() and sha256_of(dest) == file.sha256:
        print(f"{file.filename}: already present", file=sys.stderr)
        return
    mirrored = mirror.find(file) if mirror else None
    if mirrored:
        return fetch(mirrored.resolve().as_uri(), dest, file.sha256, file.size, attempts=attempts)
    try:
        fetch(file.uri, dest, file.sha256, file.size, attempts=attempts)
    except DownloadError as exc:
        if mirror is None:
            raise
        raise type(exc)(f"{exc}; {mirror.searched(file)}") from None
