"""Person-level identify: how a person's distance is made from the distances of their faces.

`python -m bench.persons [--quick]` (and `make bench-accuracy`, on its embeddings). People of
../shared/faces in the fixed order (datasets.people_in_fixed_order): those with at least
MAX_ENROLLED + 1 photos are enrolled with their first k photos (k = 1, 3, 5) and probed with
the photos after the fifth, the same probes for every k; everyone else gives one non-mated
probe (their first photo). For each rule, a probe's distance to a person is:

- best: the nearest of the person's faces (what CompreFace's subjects do);
- template: the distance to the re-normalised mean of the person's embeddings;
- mean: the mean of the distances to the person's faces
(gateway/registry/persons.py RULES, the code identify runs).

Rank-1: the nearest person is the right one. FNIR at FPIR 1%: at the distance threshold
that lets 1% of non-mated probes match anyone, the share of mated probes whose nearest
person is not theirs or is farther. With one photo the three rules are one rule.
"""
import argparse
import os
import pathlib

import numpy as np

from gateway.registry.persons import RULES

from . import report
from .calibrate_identify import threshold_at
from .datasets import labelled_faces, people_in_fixed_order, require_shared

ENROLLED = (1, 3, 5)
MAX_ENROLLED = max(ENROLLED)
FPIR = 0.01
QUICK_PEOPLE = 600  # --quick: the first people of the fixed order


def person_distances(probes: np.ndarray, faces: np.ndarray, owner: np.ndarray, people: int,
                     rule: str) -> np.ndarray:
    """(probes x people) distances under the gateway's `rule`; owner[i]: the person of faces[i]."""
    return np.stack([RULES[rule](faces[owner == person], probes) for person in range(people)],
                    axis=1)


def evaluate(vectors: dict, people) -> dict:
    """Rows of (photos per person, rule, rank-1, FNIR at FPIR 1%) over the people given."""
    people = [(name, [p for p in photos if vectors.get(p) is not None]) for name, photos in people]
    enrolled = [(name, photos) for name, photos in people if len(photos) > MAX_ENROLLED]
    strangers = [photos[0] for _, photos in people if 0 < len(photos) <= MAX_ENROLLED]
    mated = np.stack([vectors[p] for _, photos in enrolled for p in photos[MAX_ENROLLED:]])
    truth = np.concatenate([[i] * (len(photos) - MAX_ENROLLED)
                            for i, (_, photos) in enumerate(enrolled)])
    non_mated = np.stack([vectors[p] for p in strangers])
    rows = []
    for k in ENROLLED:
        faces = np.stack([vectors[p] for _, photos in enrolled for p in photos[:k]])
        owner = np.repeat(np.arange(len(enrolled)), k)
        for rule in RULES if k > 1 else list(RULES)[:1]:
            found = person_distances(mated, faces, owner, len(enrolled), rule)
            nearest, best = found.argmin(axis=1), found.min(axis=1)
            right = nearest == truth
            impostor = np.sort(person_distances(non_mated, faces, owner, len(enrolled),
                                                rule).min(axis=1))
            threshold = threshold_at(impostor, FPIR)
            rows.append({"photos_per_person": k, "rule": rule, "rank1": float(right.mean()),
                         "fnir_at_fpir_1%": float(1.0 - (right & (best <= threshold)).mean()),
                         "threshold_at_fpir_1%": threshold})
    return {"people": len(enrolled), "mated_probes": len(mated),
            "non_mated_probes": len(non_mated), "rows": rows}


def markdown(r: dict) -> str:
    return "\n".join([
        "## Person-level identify: aggregation rule x photos per person", "",
        f"{r['people']} enrolled people, {r['mated_probes']} mated and {r['non_mated_probes']} "
        "non-mated probes (bench/persons.py): one mated probe is "
        f"{100 / r['mated_probes']:.2f}% of FNIR, so rules a probe or two apart are close to "
        "even. The default rule of `group_by: \"person\"` is the best of these "
        "(gateway/registry/persons.py).", "",
        report.table(["photos per person", "rule", "rank-1", "FNIR at FPIR 1%",
                      "threshold at FPIR 1%"],
                     [[row["photos_per_person"], row["rule"], report.pct(row["rank1"]),
                       report.pct(row["fnir_at_fpir_1%"]),
                       f"{row['threshold_at_fpir_1%']:.4f}"] for row in r["rows"]]), ""])


def report_on(vectors: dict, people, out_dir: pathlib.Path, quick: bool) -> dict:
    """Evaluates, prints the table and (unless a --quick smoke run) writes persons.{md,json}."""
    results = {**evaluate(vectors, people), "quick": quick}
    print(markdown(results))
    if not quick:
        md = out_dir / "persons.md"
        md.write_text(markdown(results))
        print(f"wrote {md}, {report.write_json(out_dir / 'persons.json', results)}")
    return results


def main(argv=None) -> None:
    # Imported here: accuracy.py calls this module's evaluate on its own embeddings.
    from .accuracy import embed_images
    from .service import running_gateway
    p = argparse.ArgumentParser(prog="python -m bench.persons", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"the first {QUICK_PEOPLE} people only: a smoke run")
    p.add_argument("--out", type=pathlib.Path, default=report.RESULTS, help="results folder")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    require_shared()
    people = people_in_fixed_order(labelled_faces())
    if args.quick:
        people = people[:QUICK_PEOPLE]
    needed = {p for _, photos in people
              for p in (photos if len(photos) > MAX_ENROLLED else photos[:1])}
    with running_gateway() as svc:
        vectors = embed_images(svc, needed, args.workers)
    report_on(vectors, people, args.out, args.quick)


if __name__ == "__main__":
    main()
