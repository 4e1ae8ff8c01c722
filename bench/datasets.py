"""The labelled photos and LFW pairs in ../shared/faces (never faces/holdout)."""
import base64
import csv
import dataclasses
import hashlib
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


# Sets whose labels name people (utkface and the liveness frames do not).
PEOPLE_SETS = ("lfw_grey", "deepface", "face_recognition", "facenet_pytorch", "facenet_sandberg",
               "insightface", "nuaa")
# One person under two labels (names checked by hand; deepface's unnamed clusters and LFW's
# known duplicates found as the closest "stranger" pairs, far below any real stranger pair):
# without these, their pairs would be counted as pairs of strangers.
ALIASES = {"biden": "joseph_biden", "angelina": "angelina_jolie",
           "cluster_img34": "leonardo_dicaprio", "cluster_img29": "matt_damon",
           "hasan_wirayuda": "hassan_wirajuda", "dai_chul_chyung": "chyung_dai-chul",
           "cristina_kirchner": "cristina_fernandez",
           "gabrielle_rose": "martha_bowen"}  # LFW's Gabrielle_Rose_0001 shows Martha Bowen


@dataclasses.dataclass(frozen=True)
class Face:
    path: pathlib.Path
    person: str  # lower-case, one spelling across sets


def labelled_faces() -> list[Face]:
    """Every single-person labelled photo of PEOPLE_SETS, sorted by path."""
    faces = []
    for folder in PEOPLE_SETS:
        for row in labels(folder):
            if row["identity"]:
                person = row["identity"].strip().lower().replace(" ", "_")
                faces.append(Face(row["path"], ALIASES.get(person, person)))
    return sorted(faces, key=lambda f: str(f.path))


def people_in_fixed_order(faces: list[Face]) -> list[tuple[str, list[pathlib.Path]]]:
    """(person, photos) in a pseudo-random order that never changes: splits into enrolled
    and never-enrolled people mix every set and every number of photos."""
    photos: dict[str, list[pathlib.Path]] = {}
    for face in faces:
        photos.setdefault(face.person, []).append(face.path)
    order = sorted(photos, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    return [(name, photos[name]) for name in order]
