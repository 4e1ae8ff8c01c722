"""`python -m bench.calibrate_identify`: the identify threshold and impostor quantiles of the real pack.

Embeds every labelled face of ../shared/faces (never holdout/) with the real pack
(the backend's own handlers, in-process), takes the cosine distance of every pair of
faces of different people (millions of pairs) and writes:

- gateway/registry/impostor_quantiles.json: per recognizer, the impostor distance at a ladder of
  false-match rates (the table the gateway's `match_policy: fpir` reads) and the default
  `identify_threshold` at TARGET_FMR;
- bench/results/identify_calibration.{json,md}: the record (script, data, date, counts, numbers).
"""
import argparse
import datetime
import hashlib
import json
import os
import pathlib
import re

import numpy as np

from . import report
from .datasets import MODELS, PEOPLE_SETS, ROOT, b64, labelled_faces, require_shared
from .pipeline import Pipeline, PipelineError
from .progress import track_map

# The default identify_threshold: two stranger pairs in a million match, so a stranger matches
# someone of N enrolled faces with probability about N * 2e-6, at most 1% up to 5,000 faces.
# (1e-5 would allow 1% already at 1,000 faces; 1e-6 rests on too few pairs here.)
TARGET_FMR = 2e-6
REPORTED_FMRS = (1e-3, 1e-4, 1e-5, 2e-6, 1e-6)
STEPS_PER_DECADE = 8
RECOGNIZER = MODELS / "recognizer-mobilefacenet-paddlex/MobileFaceNet.onnx"
TABLE = ROOT / "gateway" / "registry" / "impostor_quantiles.json"
# Below this many impostor pairs under a threshold, its false-match rate is too noisy to list.
MIN_PAIRS_BELOW = 5


def embed_all(faces, workers: int) -> np.ndarray:
    """Rows of L2-normalised embeddings; NaN rows where no face was found."""
    pipe = Pipeline()
    try:
        def one(face):
            try:
                return pipe.embed(b64(face.path))
            except PipelineError as exc:
                if exc.code.name != "NOT_FOUND":
                    raise
                return None
        vectors = track_map("embed", one, faces, workers)
    finally:
        pipe.close()
    dim = next(len(v) for v in vectors if v is not None)
    return np.stack([np.full(dim, np.nan, np.float32) if v is None else v for v in vectors])


def impostor_distances(vectors: np.ndarray, people: list[str]) -> tuple[np.ndarray, int]:
    """(sorted float64 distances of every cross-person pair, number of same-person pairs)."""
    person_ids = np.unique(people, return_inverse=True)[1]
    upper = np.triu_indices(len(vectors), k=1)
    distances = (1.0 - vectors @ vectors.T)[upper]
    same = person_ids[upper[0]] == person_ids[upper[1]]
    return np.sort(distances[~same].astype(np.float64)), int(same.sum())


def threshold_at(impostors: np.ndarray, fmr: float) -> float:
    """The distance below which at most `fmr` of the impostor pairs lie (identify matches on <=).

    The midpoint between the k-th and (k+1)-th smallest impostor distances, k = floor(fmr * n),
    so exactly k impostor pairs are at or under it.
    """
    k = int(np.floor(fmr * len(impostors) + 1e-9))
    if k == 0:
        return float(impostors[0] - 1e-6)
    return float((impostors[k - 1] + impostors[k]) / 2)


def quantile_table(impostors: np.ndarray) -> list[list[float]]:
    """[[fmr, distance], ...] on a log ladder, from the rarest well-measured rate up to 0.5."""
    n = len(impostors)
    lowest = np.log10(MIN_PAIRS_BELOW / n)
    exponents = np.arange(np.ceil(lowest * STEPS_PER_DECADE), np.log10(0.5) * STEPS_PER_DECADE)
    fmrs = [float(f"{10 ** (e / STEPS_PER_DECADE):.3g}") for e in exponents] + [0.5]
    return [[fmr, round(threshold_at(impostors, fmr), 5)] for fmr in fmrs]


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_table(entry: dict) -> None:
    tables = json.loads(TABLE.read_text()) if TABLE.exists() else {}
    tables[RECOGNIZER.stem] = entry
    text = json.dumps(tables, indent=1, sort_keys=True)
    # one [rate, distance] rung per line
    text = re.sub(r"\[\s+([-\d.e+]+),\s+([-\d.e+]+)\s+\]", r"[\1, \2]", text)
    TABLE.write_text(text + "\n")


def markdown(r: dict) -> str:
    rows = [[f"{fmr:g}", f"{r['thresholds'][f'{fmr:g}']:.4f}",
             int(np.floor(fmr * r["impostor_pairs"] + 1e-9))] for fmr in REPORTED_FMRS]
    return "\n".join([
        f"# Identify threshold calibration ({r['recognizer']})", "",
        f"{r['date']}; `python -m bench.calibrate_identify`; {r['faces']} labelled faces of "
        f"{r['people']} people from {', '.join(r['sets'])} (../shared/faces, holdout/ never read); "
        f"{r['no_face']} without a detected face left out.", "",
        f"{r['impostor_pairs']:,} impostor pairs (every pair of faces of different people) and "
        f"{r['genuine_pairs']:,} genuine pairs. Recognizer sha256 `{r['recognizer_sha256']}`.", "",
        report.table(["false-match rate per comparison", "cosine distance threshold",
                      "impostor pairs at or under it"], rows), "",
        f"Default `identify_threshold` = **{r['identify_threshold']:.4f}** "
        f"(false-match rate {r['target_fmr']:g} per comparison: a stranger matches someone of N "
        f"enrolled faces with probability about N x {r['target_fmr']:g}); the verify threshold 0.74 "
        f"lets through {report.pct(r['fmr_at_verify_threshold'])} of impostor pairs.", "",
        "Only this 128-d MobileFaceNet has weights here. ArcFace R50 / MBF (512-d) and SFace are "
        "not calibrated here: their identify threshold defaults to their verify threshold "
        "(0.35 / 0.40 / 0.50) and `match_policy: fpir` answers 400 for them until a table for "
        "them is added by running this script on their weights.", ""])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.calibrate_identify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=pathlib.Path, default=report.RESULTS, help="record folder")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    require_shared()
    faces = labelled_faces()
    vectors = embed_all(faces, args.workers)
    found = ~np.isnan(vectors[:, 0])
    people = [f.person for f, ok in zip(faces, found) if ok]
    impostors, genuine = impostor_distances(vectors[found], people)
    thresholds = {f"{fmr:g}": threshold_at(impostors, fmr) for fmr in REPORTED_FMRS}
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "script": "bench/calibrate_identify.py", "sets": list(PEOPLE_SETS),
        "recognizer": RECOGNIZER.stem, "recognizer_sha256": sha256(RECOGNIZER),
        "faces": len(faces), "no_face": int((~found).sum()), "people": len(set(people)),
        "impostor_pairs": len(impostors), "genuine_pairs": genuine,
        "target_fmr": TARGET_FMR, "identify_threshold": threshold_at(impostors, TARGET_FMR),
        "thresholds": thresholds,
        "fmr_at_verify_threshold": float(np.searchsorted(impostors, 0.74, "right") / len(impostors)),
        "quantiles": quantile_table(impostors),
    }
    write_table({key: record[key] for key in (
        "date", "recognizer_sha256", "impostor_pairs", "target_fmr", "quantiles")} | {
        "identify_threshold": round(record["identify_threshold"], 4),
        "record": "bench/results/identify_calibration.json"})
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "identify_calibration.json", record)
    (args.out / "identify_calibration.md").write_text(markdown(record))
    print(markdown(record))
    print(f"wrote {TABLE}, {args.out}/identify_calibration.{{json,md}}")


if __name__ == "__main__":
    main()
