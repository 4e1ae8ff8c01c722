"""face-models: list, install, remove and verify face models from galleries.

    face-models list
    face-models install insightface-opencv --models-dir models
    face-models ensure                             # for `make run`: the default model, no-op when installed
    face-models --mirror /srv/weights install insightface-buffalo-s --accept-license

Options may come before or after the command. Exit codes: 0 done, 1 failed, 2 usage.
"""
import argparse
import os
import pathlib
import sys

from gallery import DEFAULT_MODEL
from gallery.configs import ConfigError, load_model_configs
from gallery.download import ChecksumError, DownloadError, NotAtSource, sha256_of
from gallery.index import GalleryError, find_entry, load_galleries
from gallery.install import InstallError, ensure, install, remove, verify
from gallery.unpack import UnpackError

COMMANDS = {
    "list": "gallery entries and installed models, with their licences",
    "install": "fetch, check and install NAME (reinstalls over a damaged install)",
    "ensure": f"install NAME (default {DEFAULT_MODEL}) unless it is already installed",
    "remove": "remove NAME and the files no other installed model uses",
    "verify": "re-hash the installed files of NAME",
}

OFFLINE_HINT = ("Without internet, point --mirror DIR (or FACE_MODELS_MIRROR) at a folder holding "
                "the files, or name a custom gallery with --gallery FILE_OR_URL whose entries use "
                "file:// or local http URLs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="face-models", description="Face model gallery and installer.",
        epilog="commands:\n" + "\n".join(f"  {name:<8} {text}" for name, text in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS, help="what to do (below)")
    parser.add_argument("name", nargs="?", help="model (gallery entry) name")
    parser.add_argument("--models-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ.get("FACE_MODELS_DIR", "models")),
                        help="models folder (env FACE_MODELS_DIR; default ./models)")
    parser.add_argument("--gallery", action="append", metavar="FILE_OR_URL",
                        default=[g for g in os.environ.get("FACE_MODELS_GALLERY", "").split(",") if g],
                        help="a custom gallery, searched before the built-in one (repeatable; "
                             "env FACE_MODELS_GALLERY, comma-separated)")
    parser.add_argument("--mirror", type=pathlib.Path, default=os.environ.get("FACE_MODELS_MIRROR") or None,
                        metavar="DIR", help="take files from DIR, searched recursively by file name "
                        "and SHA-256 (env FACE_MODELS_MIRROR)")
    parser.add_argument("--accept-license", action="store_true",
                        default=os.environ.get("FACE_MODELS_ACCEPT_LICENSE", "") in ("1", "true", "yes"),
                        help="accept a research-only licence (env FACE_MODELS_ACCEPT_LICENSE=1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # intermixed: options are accepted before and after the command and its name
    args = parser.parse_intermixed_args(argv)
    if args.command == "list" and args.name:
        parser.error("list takes no model name")
    if args.command == "ensure" and not args.name:
        args.name = DEFAULT_MODEL
    if args.command != "list" and not args.name:
        parser.error(f"{args.command} needs a model name")
    try:
        return _run(args)
    except NotAtSource as exc:  # the server answered: internet is not the problem
        print(f"face-models: {exc}", file=sys.stderr)
    except DownloadError as exc:
        print(f"face-models: {exc}. {OFFLINE_HINT}", file=sys.stderr)
    except (GalleryError, InstallError, ChecksumError, UnpackError, ConfigError, OSError) as exc:
        print(f"face-models: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("face-models: interrupted; run the same command again to resume", file=sys.stderr)
    return 1


def _run(args) -> int:
    models_dir = args.models_dir
    if args.command == "remove":
        removed, kept = remove(args.name, models_dir)
        print(f"{args.name}: removed" + "".join(f"\n  deleted {f}" for f in removed)
              + "".join(f"\n  kept {f} (used by another model or outside the models folder)" for f in kept))
        return 0
    if args.command == "verify":
        print("\n".join([*verify(args.name, models_dir), f"{args.name}: verified"]))
        return 0
    entries = load_galleries(args.gallery)
    if args.command == "list":
        _print_list(entries, models_dir)
        return 0
    if args.mirror is not None and not args.mirror.is_dir():
        raise InstallError(f"mirror folder {args.mirror} does not exist")
    install_options = {"mirror": args.mirror, "accept_license": args.accept_license}
    if args.command == "install":
        install(find_entry(entries, args.name), models_dir, **install_options)
        print(f"{args.name}: installed in {models_dir}")
    elif ensure(args.name, models_dir, entries, **install_options):
        print(f"{args.name}: installed in {models_dir}")
    else:
        print(f"{args.name}: already installed in {models_dir}")
    return 0


def _print_list(entries, models_dir: pathlib.Path) -> None:
    installed = load_model_configs(models_dir) if models_dir.is_dir() else {}
    width = max([len(e.name) for e in entries] + [len(n) for n in installed] + [4]) + 2
    print("Gallery:")
    for entry in entries:
        state = "installed" if entry.name in installed else (
            _partly(entry, models_dir) or
            ("needs --accept-license (research only)" if entry.research_only else ""))
        print(f"  {entry.name:<{width}}{entry.license:<30}{state}".rstrip())
    print(f"Installed in {models_dir}:" if installed else f"Installed in {models_dir}: none")
    licences = {e.name: e.license for e in entries}
    for name, config in installed.items():
        licence = config.license or licences.get(name) or "licence unknown"
        print(f"  {name:<{width}}{licence}")
    parts = sorted(models_dir.glob("*.part")) if models_dir.is_dir() else []
    if parts:
        print(f"Partly downloaded in {models_dir} (install again to resume):")
        for part in parts:
            print(f"  {part.name:<{width}}{part.stat().st_size} bytes")


def _partly(entry, models_dir: pathlib.Path) -> str:
    """'partly installed: ...' when some of a not-installed entry's files are on disk with
    the bytes the gallery names (checked by SHA-256: a name alone proves nothing)."""
    places = [lambda f: models_dir / f.filename, lambda f: models_dir / entry.name / f.filename]
    present = sum(any(_holds(place(f), f) for place in places) for f in entry.files)
    partial = sum((place(f).with_name(f"{f.filename}.part")).is_file()
                  for f in entry.files for place in places)
    if not present and not partial:
        return ""
    return (f"partly installed: {present} of {len(entry.files)} files"
            + (f", {partial} partly downloaded" if partial else "") + "; install again to finish")


def _holds(path: pathlib.Path, file) -> bool:
    return (path.is_file() and file.size in (None, path.stat().st_size)
            and sha256_of(path) == file.sha256)


if __name__ == "__main__":
    sys.exit(main())
