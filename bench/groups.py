"""Group photos: every face named at once (an optimal assignment) against face by face.

`python -m bench.groups [--quick]` (and `make bench-accuracy`). Group photos are built by
tiling 2 to 6 real photos of different people of ../shared/faces (never holdout) on a grid;
about 60% of the people are enrolled (their first photo; the group shows their second),
the others never are (people with one photo). Each group photo goes through FaceExtras'
Faces (every face, in-process on the real pack) and then through the gateway's own code:
gateway/registry/assignment.py on a local store of the enrolled people. A tile's labelled
face is the largest face detected inside it; it is right when it is given its person
(enrolled) or left unknown (never enrolled). Face by face: each face takes its nearest
person within the same threshold, from the same candidates, people may repeat.
Writes bench/results/groups.{md,json}.
"""
import argparse
import base64
import dataclasses
import os
import pathlib
import tempfile

import cv2
import numpy as np

from gateway.registry import LocalStore, Record
from gateway.registry.assignment import assign, candidate_matrix, nearest_each
from gateway.registry.openset import TABLES
from gateway.registry.persons import nearest_persons

from . import report
from .datasets import labelled_faces, people_in_fixed_order, require_shared
from .pipeline import DEFAULT_THRESHOLD, PACK_NAME, Pipeline
from .progress import track_map

TILE = 200  # pixels, each photo fitted into a square tile
COLUMNS = 3
GROUPS, QUICK_GROUPS = 300, 20
PEOPLE, QUICK_PEOPLE = 1200, 150  # of the fixed order: the enrolled and never-enrolled pools
ENROLLED_SHARE = 0.6
TOP_K = 5  # candidate people per face
# identify's default (calibrated) threshold, and the verify threshold: a looser one
THRESHOLDS = (TABLES["MobileFaceNet"]["identify_threshold"], DEFAULT_THRESHOLD)


@dataclasses.dataclass
class Tile:
    person: str
    enrolled: bool
    box: tuple[int, int, int, int]  # x, y, w, h in the group photo


@dataclasses.dataclass
class GroupPhoto:
    b64: str  # JPEG
    tiles: list[Tile]


def pools(people_limit: int) -> tuple[dict[str, list[pathlib.Path]], dict[str, pathlib.Path]]:
    """People that can be enrolled (two photos or more) and people who never are (one)."""
    people = people_in_fixed_order(labelled_faces())[:people_limit]
    return ({name: photos for name, photos in people if len(photos) >= 2},
            {name: photos[0] for name, photos in people if len(photos) == 1})


def fitted(path: pathlib.Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    scale = TILE / max(image.shape[:2])
    image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
    square = np.zeros((TILE, TILE, 3), np.uint8)
    square[:image.shape[0], :image.shape[1]] = image
    return square


def tiled(photos: list[pathlib.Path]) -> tuple[str, list[tuple[int, int, int, int]]]:
    rows = -(-len(photos) // COLUMNS)
    columns = min(len(photos), COLUMNS)
    canvas = np.zeros((rows * TILE, columns * TILE, 3), np.uint8)
    boxes = []
    for i, photo in enumerate(photos):
        y, x = divmod(i, COLUMNS)
        canvas[y * TILE:(y + 1) * TILE, x * TILE:(x + 1) * TILE] = fitted(photo)
        boxes.append((x * TILE, y * TILE, TILE, TILE))
    jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    return base64.b64encode(jpeg).decode("ascii"), boxes


def build_groups(count: int, people_limit: int, seed: int = 17):
    """(enrolled people: name -> enrolment photo, group photos); the same for a seed."""
    can_enrol, strangers = pools(people_limit)
    rng = np.random.default_rng(seed)
    enrol_names, stranger_names = sorted(can_enrol), sorted(strangers)
    groups = []
    for _ in range(count):
        size = int(rng.integers(2, 7))
        known = int(rng.binomial(size, ENROLLED_SHARE))
        chosen = [(n, True) for n in rng.choice(enrol_names, known, replace=False)]
        chosen += [(n, False) for n in rng.choice(stranger_names, size - known, replace=False)]
        order = rng.permutation(size)
        chosen = [chosen[i] for i in order]
        photos = [can_enrol[n][1] if enrolled else strangers[n] for n, enrolled in chosen]
        image, boxes = tiled(photos)
        groups.append(GroupPhoto(image, [Tile(str(n), k, box)
                                       for (n, k), box in zip(chosen, boxes)]))
    return {name: photos[0] for name, photos in can_enrol.items()}, groups


def labelled(areas: list[tuple[float, float, float, float]], tiles: list[Tile]) -> list[int | None]:
    """For each tile, the index of the largest face (x, y, w, h) centred inside it, or None."""
    found = []
    for tile in tiles:
        tx, ty, tw, th = tile.box
        inside = [i for i, (x, y, w, h) in enumerate(areas)
                  if tx <= x + w / 2 < tx + tw and ty <= y + h / 2 < ty + th]
        found.append(max(inside, key=lambda i: areas[i][2] * areas[i][3]) if inside else None)
    return found


def score(given: list[int | None], names: list[str], face_of_tile, tiles) -> tuple[int, int]:
    """(right, scored) over the tiles whose face was found."""
    right = scored = 0
    for face, tile in zip(face_of_tile, tiles):
        if face is None:
            continue
        scored += 1
        said = None if given[face] is None else names[given[face]]
        right += said == (tile.person if tile.enrolled else None)
    return right, scored


def evaluate(quick: bool, workers: int = 1) -> dict:
    enrol, groups = build_groups(QUICK_GROUPS if quick else GROUPS,
                                 QUICK_PEOPLE if quick else PEOPLE)
    pipe = Pipeline()
    with tempfile.TemporaryDirectory(prefix="face-bench-groups-") as tmp:
        store = LocalStore(pathlib.Path(tmp) / "groups.sqlite3")
        try:
            names = sorted(enrol)
            vectors = track_map("enrol", lambda n: pipe.embed_file(enrol[n]), names,
                                workers)
            for name, vector in zip(names, vectors):
                if vector is not None:
                    store.add(Record.new(name, {}, PACK_NAME, vector))
            detected = track_map("group photos", lambda g: pipe.faces(g.b64), groups,
                                 workers)
            runs = [(method, rule, threshold) for threshold in THRESHOLDS
                    for method, rule in (("assignment", assign), ("face_by_face", nearest_each))]
            totals = {run: [0, 0] for run in runs}
            repeated = dict.fromkeys(runs, 0)
            tiles_missed = 0
            for group, faces in zip(groups, detected):
                candidates = [nearest_persons(store, PACK_NAME, list(f.embedding), TOP_K)
                              for f in faces]
                distances, people = candidate_matrix(candidates)
                who = {m.person_id: m.nearest.name for found in candidates for m in found}
                columns = [who[p] for p in people]
                face_of_tile = labelled([(f.x, f.y, f.w, f.h) for f in faces], group.tiles)
                tiles_missed += face_of_tile.count(None)
                for run in runs:
                    given = run[1](distances, run[2]) if faces else []
                    right, scored = score(given, columns, face_of_tile, group.tiles)
                    totals[run][0] += right
                    totals[run][1] += scored
                    persons = [g for g in given if g is not None]
                    repeated[run] += len(persons) != len(set(persons))
        finally:
            store.close()
            pipe.close()
    return {"group_photos": len(groups), "enrolled_people": len(enrol),
            "faces_in_groups": sum(len(g.tiles) for g in groups),
            "tiles_without_a_face": tiles_missed, "top_k": TOP_K,
            "rows": [{"method": method, "threshold": threshold,
                      "accuracy": right / max(scored, 1), "faces": scored,
                      "photos_with_a_person_twice": repeated[method, rule, threshold]}
                     for (method, rule, threshold), (right, scored) in totals.items()]}


def markdown(r: dict) -> str:
    return "\n".join([
        "## Group photos: every face named at once", "",
        f"{r['group_photos']} group photos of 2 to 6 tiled real photos ({r['faces_in_groups']} "
        f"people, {r['tiles_without_a_face']} tiles where no face was detected), "
        f"{r['enrolled_people']} people enrolled, top {r['top_k']} candidate people per face "
        "(bench/groups.py), at identify's default threshold and at the looser verify "
        "threshold. Right: an enrolled person's face given that person, a never-enrolled "
        "person's face left unknown.", "",
        report.table(["method", "threshold", "accuracy", "faces scored",
                      "photos with a person twice"],
                     [[row["method"].replace("_", " "), f"{row['threshold']:.4f}",
                       report.pct(row["accuracy"]),
                       row["faces"], row["photos_with_a_person_twice"]] for row in r["rows"]]),
        ""])


def report_on(out_dir: pathlib.Path, quick: bool, workers: int = 1) -> dict:
    results = {**evaluate(quick, workers), "quick": quick}
    print(markdown(results))
    if not quick:
        md = out_dir / "groups.md"
        md.write_text(markdown(results))
        print(f"wrote {md}, {report.write_json(out_dir / 'groups.json', results)}")
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.groups", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_GROUPS} group photos: a smoke run")
    p.add_argument("--out", type=pathlib.Path, default=report.RESULTS, help="results folder")
    args = p.parse_args(argv)
    require_shared()
    report_on(args.out, args.quick, os.cpu_count() or 1)


if __name__ == "__main__":
    main()
