"""Face quality on lfw_grey's genuine pairs, each again with one photo degraded on purpose:
the EDC (FNMR at the verify threshold after discarding the pairs of lowest quality) and the
enrolment gate's refusals. Run by `make bench-accuracy` (bench/accuracy.py) and alone as
`python -m bench.quality [--quick]`; bench/fit_quality.py fits the score on FIT_FOLDS, and
the EDC is measured on the other folds only.
"""
import argparse
import base64
import collections
import dataclasses
import pathlib

import cv2
import numpy as np

from gateway.quality import DEFAULT_GATE, reasons

from . import report
from .datasets import Pair, lfw_pairs, require_shared
from .pipeline import DEFAULT_THRESHOLD, Pipeline
from .progress import track_map

FIT_FOLDS = (1, 2)
DISCARDED = (0.0, 0.05, 0.10, 0.20)
DEGRADATIONS = ("small", "blur", "dark", "jpeg")
# The reason a photo degraded each way should be refused with.
FITTING_REASON = {"small": "SMALL_FACE", "blur": "LOW_SHARPNESS", "dark": "LOW_BRIGHTNESS",
                  "jpeg": "LOW_FACE_QUALITY"}
QUICK_PAIR_STEP = 3
RANDOM_DRAWS = 200


@dataclasses.dataclass
class Sample:
    components: dict[str, float] | None  # None: no face found
    embedding: np.ndarray | None
    score: float = 0.0


@dataclasses.dataclass
class PairResult:
    first: Sample
    second: Sample
    kind: str  # "original" or one of DEGRADATIONS (the second photo degraded)

    @property
    def fails(self) -> bool:
        if self.first.embedding is None or self.second.embedding is None:
            return True
        return 1.0 - float(self.first.embedding @ self.second.embedding) > DEFAULT_THRESHOLD


def degrade(img: np.ndarray, kind: str, rng: np.random.Generator,
            inter_eye: float) -> tuple[np.ndarray, str]:
    """The photo degraded one way, and how it is sent (PNG, or JPEG for "jpeg")."""
    if kind == "small":  # downscaled until the inter-eye distance is 12-20 px
        scale = rng.uniform(12, 20) / max(inter_eye, 1.0)
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA), ".png"
    if kind == "blur":
        return cv2.GaussianBlur(img, (0, 0), rng.uniform(2, 4)), ".png"
    if kind == "dark":  # mean brightness below 40
        target = rng.uniform(15, 39)
        return np.clip(img * (target / max(img.mean(), 1.0)), 0, 255).astype(np.uint8), ".png"
    return img, ".jpg"


def _encode(img: np.ndarray, ext: str) -> str:
    params = [cv2.IMWRITE_JPEG_QUALITY, 5] if ext == ".jpg" else []
    return base64.b64encode(cv2.imencode(ext, img, params)[1].tobytes()).decode("ascii")


def _sample(pipe: Pipeline, img_b64: str) -> Sample:
    face = pipe.primary_face(img_b64)
    if face is None:
        return Sample(None, None)
    parts = dict(face.quality.components)
    return Sample(parts, np.asarray(face.embedding, np.float64), face.quality.score)


def measure(pipe: Pipeline, pairs: list[Pair], workers: int = 2) -> list[PairResult]:
    """Every genuine pair as it is, and again with its second photo degraded (the kinds in
    turn, so a quarter each)."""
    genuine = [p for p in pairs if p.same]
    files = sorted({f for p in genuine for f in (p.file1, p.file2)})
    originals = dict(zip(files, track_map(
        "quality of photos", lambda f: _sample(pipe, base64.b64encode(f.read_bytes()).decode()),
        files, workers)))

    def degraded(item):
        index, pair = item
        rng = np.random.default_rng(index)
        kind = DEGRADATIONS[index % len(DEGRADATIONS)]
        img = cv2.imread(str(pair.file2), cv2.IMREAD_COLOR)
        eyes = (originals[pair.file2].components or {}).get("inter_eye_px", 40.0)
        return kind, _sample(pipe, _encode(*degrade(img, kind, rng, eyes)))

    changed = track_map("quality of degraded photos", degraded, list(enumerate(genuine)), workers)
    return ([PairResult(originals[p.file1], originals[p.file2], "original") for p in genuine]
            + [PairResult(originals[p.file1], sample, kind)
               for p, (kind, sample) in zip(genuine, changed)])


# How each measure ranks a face, higher better; a face not found ranks below every face.
RANKINGS = {
    "unified": lambda s: s.score,
    "inter_eye_px": lambda s: s.components["inter_eye_px"],
    "pose": lambda s: -max(abs(s.components["yaw"]), abs(s.components["pitch"])),
    "sharpness": lambda s: s.components["sharpness"],
    "brightness": lambda s: -abs(s.components["brightness"] - 128),
    "clipped": lambda s: -s.components["clipped"],
    "embedding_norm": lambda s: s.components["embedding_norm"],
    "detector_score": lambda s: s.components["detector_score"],
}


def _rank(sample: Sample, measure_of) -> float:
    return -np.inf if sample.components is None else float(measure_of(sample))


def fnmr_after_discarding(fails: np.ndarray, pair_quality: np.ndarray, share: float) -> float:
    """FNMR of the pairs left once the `share` of lowest pair quality is discarded."""
    order = np.argsort(pair_quality, kind="stable")
    kept = order[int(round(share * len(order))):]
    return float(fails[kept].mean())


def edc(results: list[PairResult]) -> dict[str, list[float]]:
    """FNMR at each DISCARDED share, per ranking (and random), pairs ranked by the lower
    quality of their two photos."""
    fails = np.array([r.fails for r in results])
    table = {}
    for name, measure_of in RANKINGS.items():
        pair_quality = np.array([min(_rank(r.first, measure_of), _rank(r.second, measure_of))
                                 for r in results])
        table[name] = [fnmr_after_discarding(fails, pair_quality, d) for d in DISCARDED]
    rng = np.random.default_rng(0)
    draws = [[fnmr_after_discarding(fails, rng.random(len(results)), d) for d in DISCARDED]
             for _ in range(RANDOM_DRAWS)]
    table["random"] = list(np.mean(draws, axis=0))
    return table


def gate_counts(results: list[PairResult], gate: str = DEFAULT_GATE) -> dict[str, tuple]:
    """Per kind of photo: (photos, refused, refused with the fitting reason, no face, how many
    times each reason was given)."""
    photos: dict[str, list[Sample]] = {"original": []}
    seen = set()
    for r in results:
        for sample, kind in ((r.first, "original"), (r.second, r.kind)):
            if kind == "original" and id(sample) in seen:
                continue
            seen.add(id(sample))
            photos.setdefault(kind, []).append(sample)
    counts = {}
    for kind, samples in photos.items():
        found = [reasons(s.score, s.components, gate) for s in samples if s.components]
        fitting = FITTING_REASON.get(kind, "")
        counts[kind] = (len(samples), sum(bool(f) for f in found),
                        sum(any(x.startswith(fitting + ":") for x in f) for f in found)
                        if fitting else 0, len(samples) - len(found),
                        collections.Counter(x.split(":")[0] for f in found for x in f))
    return counts


def edc_report(title: str, results: list[PairResult]) -> list[str]:
    table = edc(results)
    fails = sum(r.fails for r in results)
    lines = [f"### {title}", "", f"{len(results)} genuine pairs, {fails} fail at the verify "
             f"threshold {DEFAULT_THRESHOLD} (a face not found fails).", "",
             "| discarded by | " + " | ".join(f"{d:.0%}" for d in DISCARDED)
             + " | FNMR change at 10% |", "|---" * (len(DISCARDED) + 2) + "|"]
    for name, row in table.items():
        change = (row[2] - row[0]) / row[0] if row[0] else 0.0
        lines.append(f"| {name} | " + " | ".join(f"{v:.2%}" for v in row) + f" | {change:+.0%} |")
    return lines + [""]


def gate_report(results: list[PairResult]) -> list[str]:
    lines = [f"### The default gate ({DEFAULT_GATE}) on each kind of photo", "",
             "| photos | count | refused | with the fitting reason | no face found |",
             "|---|---|---|---|---|"]
    given = {}
    for kind, (n, refused, fitting, no_face, why) in gate_counts(results).items():
        reason = f"{fitting} ({FITTING_REASON[kind]})" if kind in FITTING_REASON else "-"
        lines.append(f"| {kind} | {n} | {refused} ({refused / max(n, 1):.1%}) | {reason} "
                     f"| {no_face} |")
        given[kind] = ", ".join(f"{code} {count}" for code, count in why.most_common())
    return lines + ["", "Reasons given (a photo may have several): " + "; ".join(
        f"{kind}: {why or 'none'}" for kind, why in given.items()) + ".", ""]


def plot(results: list[PairResult], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in edc(results).items():
        ax.plot([d * 100 for d in DISCARDED], [v * 100 for v in row], marker="o", label=name,
                linewidth=2.5 if name == "unified" else 1.2)
    ax.set(xlabel="pairs discarded, lowest quality first (%)",
           ylabel=f"FNMR at distance {DEFAULT_THRESHOLD} (%)",
           title="EDC: lfw_grey genuine pairs + one photo degraded")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluation_pairs(quick: bool) -> list[Pair]:
    pairs = [p for p in lfw_pairs() if p.same and p.fold not in FIT_FOLDS]
    return pairs[::QUICK_PAIR_STEP] if quick else pairs


def acceptance(results: list[PairResult]) -> list[str]:
    """The issue's bar: at 10% discarded, the unified score lowers FNMR by at least 30%, and
    by more than the detector score alone."""
    table = edc(results)
    cut = {name: (row[0] - row[2]) / row[0] if row[0] else 0.0 for name, row in table.items()}
    passed = cut["unified"] >= 0.30 and cut["unified"] > cut["detector_score"]
    return [f"At 10% discarded, FNMR falls by {cut['unified']:.0%} by the unified score "
            f"(bar: 30%) and by {cut['detector_score']:.0%} by the detector score alone: "
            f"{'PASS' if passed else 'FAIL'}.", ""]


def run(out: pathlib.Path, quick: bool, workers: int = 2) -> list[str]:
    """The report's lines (written to out/quality.md, the plot to out/quality_edc.png)."""
    require_shared()
    pipe = Pipeline()
    try:
        results = measure(pipe, evaluation_pairs(quick), workers)
    finally:
        pipe.close()
    originals = [r for r in results if r.kind == "original"]
    lines = ["## Face quality (EDC and the enrolment gate)", "",
             f"Pairs of lfw_grey folds other than {FIT_FOLDS} (the score is fitted on those)"
             + (f", every {QUICK_PAIR_STEP}rd (--quick)" if quick else "") + ".", ""]
    lines += edc_report("lfw_grey genuine pairs and each again with one photo degraded", results)
    lines += acceptance(results)
    lines += edc_report("lfw_grey's own genuine pairs (no bar: too few errors to judge by)",
                    originals)
    lines += gate_report(results)
    lines += ["EDC plot: quality_edc.png", ""]
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / "quality_edc.png")
    (out / "quality.md").write_text("\n".join(lines))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=report.RESULTS, help="results folder")
    args = parser.parse_args()
    print("\n".join(run(args.out, args.quick)))


if __name__ == "__main__":
    main()
