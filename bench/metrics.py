"""Pure numpy metrics: verification (accuracy, k-fold, ROC, TAR@FAR, EER), liveness, latency.

Distances are cosine distances (smaller = more alike) and a pair is accepted when
`distance < threshold`, as the service's verify does. A pair where either image had
no face is given NO_FACE_DISTANCE: it is rejected at any sensible threshold, which is
the answer a user of the service gets (a 404 is not a match).
"""
import numpy as np

NO_FACE_DISTANCE = 2.0  # the largest cosine distance


def _arrays(distances, same):
    return np.asarray(distances, np.float64), np.asarray(same, bool)


def accuracy(distances, same, threshold: float) -> float:
    d, s = _arrays(distances, same)
    return float(np.mean((d < threshold) == s))


def rates_at(distances, same, threshold: float) -> tuple[float, float]:
    """(FAR, TAR): the share of impostor and of genuine pairs accepted at the threshold."""
    d, s = _arrays(distances, same)
    return float(np.mean(d[~s] < threshold)), float(np.mean(d[s] < threshold))


def candidate_thresholds(distances) -> np.ndarray:
    """Midpoints between neighbouring distinct distances, plus one below and one above all."""
    u = np.unique(np.asarray(distances, np.float64))
    return np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]])


def _accepted(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many of sorted_values are < each threshold."""
    return np.searchsorted(sorted_values, thresholds, side="left")


def roc(distances, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FAR, TAR) over every candidate threshold, FAR ascending."""
    d, s = _arrays(distances, same)
    genuine, impostor = np.sort(d[s]), np.sort(d[~s])
    t = candidate_thresholds(d)
    return t, _accepted(impostor, t) / len(impostor), _accepted(genuine, t) / len(genuine)


def best_threshold(distances, same) -> float:
    """The threshold of highest accuracy (the middle one where several tie)."""
    d, s = _arrays(distances, same)
    t, far, tar = roc(d, s)
    n_gen, n_imp = s.sum(), (~s).sum()
    acc = (tar * n_gen + (1 - far) * n_imp) / len(d)
    best = np.flatnonzero(acc == acc.max())
    return float(t[best[len(best) // 2]])


def kfold_accuracy(distances, same, folds) -> dict:
    """LFW protocol: each fold tested at the threshold that is best on the other folds."""
    d, s = _arrays(distances, same)
    folds = np.asarray(folds)
    accs, thresholds = [], []
    for fold in np.unique(folds):
        test = folds == fold
        t = best_threshold(d[~test], s[~test])
        thresholds.append(t)
        accs.append(accuracy(d[test], s[test], t))
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)),
            "fold_accuracies": [float(a) for a in accs], "fold_thresholds": thresholds}


def allowed_false_accepts(impostor_pairs: int, far: float) -> int:
    return int(np.floor(far * impostor_pairs + 1e-9))  # 1e-9: 0.29 * 100 is 28.999...


def tar_at_far(distances, same, far: float) -> tuple[float, float]:
    """(TAR, threshold) at the largest threshold whose false accept rate is at most `far`.

    With m impostor pairs at most floor(far * m) may be accepted, so FAR 1e-3 on
    1500 impostor pairs means at most one false accept.
    """
    d, s = _arrays(distances, same)
    genuine, impostor = d[s], np.sort(d[~s])
    allowed = allowed_false_accepts(len(impostor), far)
    if allowed >= len(impostor):
        return 1.0, float("inf")
    threshold = float(impostor[allowed])  # strict <: impostors at this distance stay rejected
    return float(np.mean(genuine < threshold)), threshold


def equal_error_rate(distances, same) -> tuple[float, float]:
    """(EER, threshold) where the false accept and false reject rates meet."""
    t, far, tar = roc(distances, same)
    frr = 1 - tar
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(t[i])


def liveness_rates(truth_real, predicted_real) -> dict:
    """ISO/IEC 30107-3 rates: APCER (spoofs let through), BPCER (real ones refused)."""
    truth, pred = np.asarray(truth_real, bool), np.asarray(predicted_real, bool)
    spoof, real = ~truth, truth
    apcer = float(np.mean(pred[spoof])) if spoof.any() else float("nan")
    bpcer = float(np.mean(~pred[real])) if real.any() else float("nan")
    return {"n": int(len(truth)), "real": int(real.sum()), "spoof": int(spoof.sum()),
            "accuracy": float(np.mean(truth == pred)) if len(truth) else float("nan"),
            "apcer": apcer, "bpcer": bpcer}


def rate(flags) -> float:
    flags = np.asarray(flags, bool)
    return float(flags.mean()) if flags.size else float("nan")


def mean_absolute_error(truth, predicted) -> float:
    t, p = np.asarray(truth, np.float64), np.asarray(predicted, np.float64)
    return float(np.mean(np.abs(t - p))) if t.size else float("nan")


def latency_summary(seconds, wall_seconds: float | None = None) -> dict:
    """p50/p95/mean in ms of per-request times; throughput when the run's wall time is given."""
    ms = np.asarray(seconds, np.float64) * 1000
    out = {"n": int(ms.size), "p50_ms": float(np.percentile(ms, 50)),
           "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean())}
    if wall_seconds:
        out["rps"] = float(ms.size / wall_seconds)
    return out
