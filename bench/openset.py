"""Open-set 1:N identification in the manner of NIST FRVT 1:N, on service embeddings.

People of ../shared/faces in a fixed pseudo-random order (datasets.people_in_fixed_order)
take turns: of those with two or more photos, every other one is enrolled (first photo in
the gallery, the other photos are mated probes) and the rest are never enrolled; of those
with one photo, every other one is a distractor in the gallery and the rest are never
enrolled. Every never-enrolled person gives one non-mated probe (their first photo).

For a gallery of the first N entries: a non-mated probe is a false positive at threshold t
when its nearest gallery face is at distance <= t (FPIR); a mated probe whose mate is in
the gallery is a miss when the nearest face is not its mate or is farther than t (FNIR).
The search is the registry's exact cosine search, done here on the embeddings that
/v1/face/embed returned.
"""
import numpy as np

from .calibrate_identify import threshold_at

FPIR_POINTS = (1e-2, 1e-3)
GALLERY_SIZES = (100, 1000)  # and every gallery entry available


def split(people: list[tuple[str, list]]) -> tuple[list, list, list]:
    """(gallery [(person, photo)], mated probes [(person, photo)], non-mated probes [photo])."""
    gallery, mated, non_mated = [], [], []
    turn = {True: 0, False: 0}  # by "has several photos"
    for name, photos in people:
        several = len(photos) > 1
        enrolled = turn[several] % 2 == 0
        turn[several] += 1
        if enrolled:
            gallery.append((name, photos[0]))
            mated += [(name, p) for p in photos[1:]]
        else:
            non_mated.append(photos[0])
    return gallery, mated, non_mated


def searches(vectors: dict, gallery, mated, non_mated, size: int) -> dict:
    """Nearest-face distances of every probe against the first `size` gallery entries."""
    names = [name for name, _ in gallery[:size]]
    matrix = np.stack([vectors[p] for _, p in gallery[:size]])
    inside = set(names)
    mated = [(name, p) for name, p in mated if name in inside]
    nearest_mated = 1.0 - np.stack([vectors[p] for _, p in mated]) @ matrix.T
    best = nearest_mated.argmin(axis=1)
    right = np.array([names[i] == name for i, (name, _) in zip(best, mated)])
    non_mated_best = (1.0 - np.stack([vectors[p] for p in non_mated]) @ matrix.T).min(axis=1)
    return {"mated_best": nearest_mated.min(axis=1), "mated_right": right,
            "non_mated_best": np.sort(non_mated_best)}


def fpir(s: dict, threshold):
    """Share of non-mated probes whose nearest face is within `threshold` (a number or array)."""
    return np.searchsorted(s["non_mated_best"], threshold, "right") / len(s["non_mated_best"])


def fnir(s: dict, threshold):
    """Share of mated probes not found: nearest face not the mate, or beyond `threshold`."""
    found = np.sort(s["mated_best"][s["mated_right"]])
    return 1.0 - np.searchsorted(found, threshold, "right") / len(s["mated_best"])


def det_curve(s: dict) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) at every threshold where either changes, strictest first."""
    t = np.unique(np.concatenate([s["non_mated_best"], s["mated_best"]]))
    return fpir(s, t), fnir(s, t)


def evaluate(vectors: dict, people, identify_threshold: float, verify_threshold: float) -> dict:
    """Rows by gallery size (100, 1000 and all), each with FNIR at FPIR and FPIR at defaults."""
    people = [(name, [p for p in photos if vectors.get(p) is not None]) for name, photos in people]
    gallery, mated, non_mated = split([(n, photos) for n, photos in people if photos])
    rows, curves = [], {}
    for size in sorted({*(n for n in GALLERY_SIZES if n < len(gallery)), len(gallery)}):
        s = searches(vectors, gallery, mated, non_mated, size)
        row = {"N": size, "mated_probes": len(s["mated_best"]), "non_mated_probes": len(non_mated),
               "identify_threshold": identify_threshold,
               "fpir_at_identify_threshold": float(fpir(s, identify_threshold)),
               "fnir_at_identify_threshold": float(fnir(s, identify_threshold)),
               "verify_threshold": verify_threshold,
               "fpir_at_verify_threshold": float(fpir(s, verify_threshold))}
        for point in FPIR_POINTS:
            t = threshold_at(s["non_mated_best"], point)
            row[f"threshold_at_fpir_{point:g}"] = t
            row[f"fnir_at_fpir_{point:g}"] = float(fnir(s, t))
        rows.append(row)
        curves[size] = det_curve(s)
    return {"rows": rows, "curves": curves}
