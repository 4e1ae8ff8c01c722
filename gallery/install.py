"""Installing, checking and removing gallery models in a models folder.

Layout: `<models-dir>/<name>.yaml` plus the files flat beside it, zip packs
unpacked into `<models-dir>/<pack>/`. A model counts as installed once its YAML
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
    _refuse_conflicts(entry, load_model_configs(models_dir))
    records = []
    searched = Mirror(mirror) if mirror else None
    for file in entry.files:
        dest = models_dir / file.filename
        _fetch_unless_present(file, dest, searched, attempts)
        if file.pack is None:
            records.append({"filename": file.filename, "sha256": file.sha256, "uri": file.uri})
            continue
        for name in unpack_pack(dest, models_dir / file.pack):
            member = f"{file.pack}/{name}"
            records.append({"filename": member, "sha256": sha256_of(models_dir / member),
                            "unpacked_from": file.filename})
        dest.unlink()  # the unpacked files are what the model uses; the zip would double the space
    path = write_config(models_dir, entry.name, backend=entry.backend, options=list(entry.options),
                        model=entry.model, files=records, license=entry.license,
                        description=entry.description)
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


def _refuse_conflicts(entry: GalleryEntry, installed: dict[str, ModelConfig]) -> None:
    # Files are shared by name (the liveness pair). Another model's different bytes under
    # the same name must not be overwritten: that model would silently change.
    for file in entry.files:
        for other in installed.values():
            recorded = other.file_sha256.get(file.filename)
            if other.name != entry.name and recorded and recorded != file.sha256:
                raise InstallError(
                    f"{file.filename} is installed for {other.name} with SHA-256 {recorded}, "
                    f"but {entry.name} needs {file.sha256}; remove {other.name} first")


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
