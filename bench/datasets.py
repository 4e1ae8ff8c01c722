"""The labelled photos and LFW pairs in ../shared/faces (never faces/holdout)."""
import base64
import csv
import dataclasses
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FACES = SHARED / "faces"
MODELS = SHARED / "models"


@dataclasses.dataclass(frozen=True)
class Pair:
    fold: int
    file1: pathlib.Path
    file2: pathlib.Path
    same: bool


def require_shared() -> None:
    if not (MODELS / "MANIFEST.tsv").exists() or not (FACES / "lfw_grey" / "pairs.csv").exists():
        raise SystemExit(f"the benchmarks need the real weights and photos in {SHARED}")


def labels(folder: str) -> list[dict]:
    """Rows of `<folder>/labels.csv` with `path` added (file, identity, age, gender, is_real)."""
    with open(FACES / folder / "labels.csv", newline="") as f:
        return [{**row, "path": FACES / folder / row["file"]} for row in csv.DictReader(f)]


def lfw_pairs() -> list[Pair]:
    base = FACES / "lfw_grey"
    with open(base / "pairs.csv", newline="") as f:
        return [Pair(int(r["fold"]), base / r["file1"], base / r["file2"], r["same"] == "1")
                for r in csv.DictReader(f)]


def identities(folder: str) -> dict[str, list[pathlib.Path]]:
    """Photos by identity (rows with a blank identity, such as group photos, left out)."""
    found: dict[str, list[pathlib.Path]] = {}
    for row in labels(folder):
        if row["identity"]:
            found.setdefault(row["identity"], []).append(row["path"])
    return {name: sorted(paths) for name, paths in sorted(found.items())}


def b64(path: pathlib.Path) -> str:
    return base64.b64encode(pathlib.Path(path).read_bytes()).decode("ascii")
