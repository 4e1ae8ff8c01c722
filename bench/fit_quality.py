"""`python -m bench.fit_quality`: fits the unified face quality score (backend/models/quality.py)
on lfw_grey's genuine pairs of FIT_FOLDS, each also with one photo degraded on purpose
(bench/quality.py), and writes its coefficients to backend/models/quality.json.

A logistic regression of "this photo's genuine pair fails at the verify threshold" on the
photo's quality features, the two classes weighted equally (failures are rare), with a
small L2 penalty; fitted by Newton's method. Never run on ../shared/faces/holdout.
"""
import json

import numpy as np

from backend.models import quality

from .datasets import lfw_pairs, require_shared
from .pipeline import Pipeline
from .quality import FIT_FOLDS, measure

L2 = 1.0
RECOGNIZER = "MobileFaceNet"  # the pack's (bench/pipeline.py): the norms are on its scale
NEWTON_STEPS = 50


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights and bias of the balanced, L2-penalised logistic regression of y on x."""
    weight = np.where(y, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    design = np.hstack([x, np.ones((len(x), 1))])
    beta = np.zeros(design.shape[1])
    penalty = np.diag([L2] * x.shape[1] + [0.0])
    for _ in range(NEWTON_STEPS):
        p = 1 / (1 + np.exp(-design @ beta))
        gradient = design.T @ (weight * (p - y)) + penalty @ beta
        hessian = (design * (weight * p * (1 - p))[:, None]).T @ design + penalty
        beta -= np.linalg.solve(hessian, gradient)
    return beta[:-1], float(beta[-1])


def print_quantiles(results) -> None:
    """Where each kind of photo lies on each gated component: what the gate's bounds
    (gateway/quality.py) are chosen from."""
    kinds: dict[str, list[dict]] = {}
    for r in results:
        for sample, kind in ((r.first, "original"), (r.second, r.kind)):
            if sample.components is not None:
                kinds.setdefault(kind, []).append({**sample.components,
                                                     "score": quality.score(sample.components,
                                                                            RECOGNIZER)})
    print("component quantiles 1/5/50/95/99% by kind of photo (fit folds):")
    for name in ("inter_eye_px", "sharpness", "brightness", "yaw", "pitch", "score"):
        for kind, rows in kinds.items():
            values = np.abs([row[name] for row in rows]) if name in ("yaw", "pitch") else \
                [row[name] for row in rows]
            print(f"  {name:>13} {kind:>8} n={len(rows):4d} "
                  + " ".join(f"{v:8.1f}" for v in np.percentile(values, [1, 5, 50, 95, 99])))


def main() -> None:
    require_shared()
    pipe = Pipeline()
    try:
        results = measure(pipe, [p for p in lfw_pairs() if p.fold in FIT_FOLDS])
    finally:
        pipe.close()
    rows, labels = [], []
    for r in results:
        for sample in (r.first, r.second):
            if sample.components is not None:
                rows.append(quality.features(sample.components))
                labels.append(r.fails)
    x, y = np.array(rows), np.array(labels, dtype=float)
    mean, scale = x.mean(0), x.std(0) + 1e-9
    weights, bias = fit((x - mean) / scale, y)
    quality.COEFFICIENTS.write_text(json.dumps({
        "fitted_on": f"lfw_grey genuine pairs of folds {FIT_FOLDS}, each also with one photo "
                     "degraded (bench/quality.py); bench/fit_quality.py",
        "recognizer": RECOGNIZER, "samples": len(y), "failures": int(y.sum()),
        "mean": mean.tolist(), "scale": scale.tolist(), "weights": weights.tolist(),
        "bias": bias}, indent=1) + "\n")
    print(f"{len(y)} photos, {int(y.sum())} of failing pairs; weights {np.round(weights, 3)}")
    quality._model.cache_clear()  # the scores below by the coefficients just written
    print_quantiles(results)


if __name__ == "__main__":
    main()
