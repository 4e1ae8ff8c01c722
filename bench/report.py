"""Writing results: Markdown tables, JSON, and the accuracy plots (matplotlib, Agg).

The scripts gather measurements into one plain dict per benchmark; these functions
turn such a dict into files, so they can be tested on synthetic numbers.
"""
import json
import math
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from . import metrics  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


# -- formatting -----------------------------------------------------------------

def _missing(x) -> bool:
    """None or NaN: a rate over nothing (no spoof in a set, a skipped peer)."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x) -> str:
    return "n/a" if _missing(x) else f"{100 * x:.2f}%"


def num(x, digits: int = 1) -> str:
    return "n/a" if _missing(x) else f"{x:.{digits}f}"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def goal(text: str, passed: bool, measured: str) -> dict:
    return {"goal": text, "passed": bool(passed), "measured": measured}


def goals_table(goals: list[dict]) -> str:
    return table(["goal", "measured", "result"],
                 [[g["goal"], g["measured"], "PASS" if g["passed"] else "MISS"] for g in goals])


def _json_ready(value):
    """NaN and infinity are not JSON: written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    return value


def write_json(path: pathlib.Path, data: dict) -> pathlib.Path:
    path.write_text(json.dumps(_json_ready(data), indent=2, sort_keys=True) + "\n")
    return path


# -- plots ------------------------------------------------------------------------

def plot_roc(path: pathlib.Path, distances, same, default_threshold: float) -> pathlib.Path:
    _, far, tar = metrics.roc(distances, same)
    n_imp = int(np.sum(~np.asarray(same, bool)))
    # FAR 0 cannot sit on a log axis: such points are drawn at the left edge.
    left = min(1 / max(n_imp, 1), 1e-3) / 2
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(np.maximum(far, left), tar, lw=1.5, label="service (embed endpoint)")
    for target in (1e-2, 1e-3):
        t_tar, _ = metrics.tar_at_far(distances, same, target)
        ax.plot([target], [t_tar], "o", label=f"TAR {t_tar:.4f} at FAR {target:g}")
    d_far, d_tar = metrics.rates_at(distances, same, default_threshold)
    ax.plot([max(d_far, left)], [d_tar], "s", label=f"default threshold {default_threshold:g} "
                                                  f"(FAR {d_far:.4f}, TAR {d_tar:.4f})")
    ax.set_xscale("log")
    ax.set_xlim(left, 1)
    # TAR is close to 1 wherever it matters: show from a little below the TAR at FAR 0.
    ax.set_ylim(max(0.0, float(tar[far == 0].max()) - 0.02), 1.002)
    ax.set_xlabel("false accept rate (impostor pairs accepted)")
    ax.set_ylabel("true accept rate (genuine pairs accepted)")
    ax.set_title(f"ROC on LFW pairs ({len(np.asarray(same))} pairs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_distances(path: pathlib.Path, distances, same, default_threshold: float,
                   eer_threshold: float) -> pathlib.Path:
    d, s = np.asarray(distances, np.float64), np.asarray(same, bool)
    faced = d < metrics.NO_FACE_DISTANCE  # pairs with a missing face have no real distance
    bins = np.linspace(0, max(1.2, float(d[faced].max(initial=0)) + 0.05), 60)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.hist(d[faced & s], bins=bins, alpha=0.6, label=f"genuine ({int((faced & s).sum())})")
    ax.hist(d[faced & ~s], bins=bins, alpha=0.6, label=f"impostor ({int((faced & ~s).sum())})")
    ax.axvline(default_threshold, color="k", lw=1.5,
               label=f"default threshold {default_threshold:g}")
    ax.axvline(eer_threshold, color="k", ls="--", lw=1, label=f"EER threshold {eer_threshold:.3f}")
    ax.set_yscale("log")  # the few pairs near the threshold matter, and vanish on a linear axis
    ax.set_ylim(0.5, ax.get_ylim()[1] * 8)  # room for single pairs below and the legend above
    ax.set_xlabel("cosine distance")
    ax.set_ylabel("pairs (log scale)")
    missing = int((~faced).sum())
    ax.set_title("LFW pair distances" + (f" ({missing} pairs without a face left out)"
                                          if missing else ""))
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_det(path: pathlib.Path, curves: dict, rows: list[dict]) -> pathlib.Path:
    """FNIR against FPIR per gallery size, log-log, with the default identify threshold marked."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        x, y = curves[row["N"]]
        floor = 1 / (2 * row["non_mated_probes"])  # FPIR 0 cannot sit on a log axis
        line, = ax.plot(np.maximum(x, floor), np.maximum(y, 1e-4), lw=1.5,
                        label=f"N = {row['N']}")
        ax.plot([max(row["fpir_at_identify_threshold"], floor)],
                [max(row["fnir_at_identify_threshold"], 1e-4)], "s", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FPIR (never-enrolled probes matched to someone)")
    ax.set_ylabel("FNIR (enrolled probes missed at rank 1)")
    ax.set_title(f"Open-set DET; squares: identify threshold {rows[0]['identify_threshold']:.3f}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def openset_markdown(r: dict) -> list[str]:
    rows = r["openset_by_n"]
    return [
        "## Open-set identification (FRVT 1:N style)", "",
        "Every labelled person of ../shared/faces: enrolled people (one photo in the gallery, "
        "their other photos as mated probes), one-photo distractors in the gallery, and "
        "never-enrolled people (one non-mated probe each); `bench/openset.py` has the protocol. "
        "FNIR: a mated probe's nearest face is not its mate or is beyond the threshold; FPIR: a "
        "non-mated probe's nearest face is within it. With ~1,000 non-mated probes, FPIR 0.1% "
        "rests on one probe.", "",
        table(["N (gallery)", "mated / non-mated probes", "FNIR at FPIR 1%", "FNIR at FPIR 0.1%",
               f"FPIR at identify threshold {rows[0]['identify_threshold']:.3f}",
               f"FNIR there", f"FPIR at verify threshold {rows[0]['verify_threshold']:g}"], [
            [x["N"], f"{x['mated_probes']} / {x['non_mated_probes']}", pct(x["fnir_at_fpir_0.01"]),
             pct(x["fnir_at_fpir_0.001"]), pct(x["fpir_at_identify_threshold"]),
             pct(x["fnir_at_identify_threshold"]), pct(x["fpir_at_verify_threshold"])]
            for x in rows]),
        "", "DET curves: `det.png`.", ""]


# -- accuracy -----------------------------------------------------------------------

def accuracy_markdown(r: dict) -> str:
    folds = ", ".join(pct(a) for a in r["lfw_fold_accuracies"])
    thresholds = ", ".join(f"{t:.3f}" for t in r["lfw_fold_thresholds"])
    low, high = r["utkface_adult_ages"]
    out = [
        f"# Accuracy of the face service ({r['model']})",
        "",
        f"{r['date']}, {r['cpu_count']} CPUs{', quick subset' if r['quick'] else ''}; "
        "everything through the HTTP API (`python -m gateway`) except the in-process and peer "
        "rows.",
        "",
        "## LFW verification (`lfw_grey/pairs.csv`)",
        "",
        f"{r['lfw_pairs']} pairs over {r['lfw_images']} images, one `/v1/face/embed` call per "
        f"image, cosine distances computed locally; {r['lfw_no_face_images']} images without a "
        "detected face (their pairs count as rejected).",
        "",
        table(["metric", "value"], [
            ["accuracy, LFW protocol (threshold chosen on the other folds)",
             f"{pct(r['lfw_accuracy'])} ± {pct(r['lfw_accuracy_std'])}"],
            ["per fold", folds],
            ["thresholds chosen", thresholds],
            [f"accuracy at the default threshold {r['default_threshold']:g}",
             pct(r["lfw_accuracy_at_default_threshold"])],
            ["TAR at FAR 1e-2", f"{pct(r['lfw_tar_at_far_1e-2'])} (threshold "
                                f"{num(r['lfw_threshold_at_far_1e-2'], 3)})"],
            ["TAR at FAR 1e-3", f"{pct(r['lfw_tar_at_far_1e-3'])} (threshold "
                                f"{num(r['lfw_threshold_at_far_1e-3'], 3)})"],
            ["EER", f"{pct(r['lfw_eer'])} at threshold {num(r['lfw_eer_threshold'], 3)}"],
        ]),
        "",
        "FAR 1e-3 on this many impostor pairs allows at most "
        f"{metrics.allowed_false_accepts(r['lfw_impostor_pairs'], 1e-3)} false accept(s): "
        "a coarse estimate.",
        "",
        "![ROC](roc.png) ![distances](distances.png)",
        "",
    ]
    c = r["comparison"]
    out += [
        f"### Same pairs, default thresholds: {c['sample']}",
        "",
        table(["what", "accuracy", "pairs with a missing face"], [
            ["service, `/v1/face/verify`", pct(c["verify_endpoint_accuracy"]),
             c["verify_endpoint_no_face"]],
            ["service, `/v1/face/embed` + local cosine", pct(c["embed_endpoint_accuracy"]),
             c["embed_endpoint_no_face"]],
            ["same pipeline in-process (no server)", pct(c["inprocess_accuracy"]),
             c["inprocess_no_face"]],
            [f"peer: face_recognition (dlib), tolerance {c['peer_tolerance']}",
             pct(c["peer_accuracy"]) if c["peer_accuracy"] is not None else c["peer_skipped"],
             c["peer_no_face"] if c["peer_accuracy"] is not None else "-"],
        ]),
        "",
        f"verify endpoint vs embed endpoint: same decision on {pct(c['verify_embed_agreement'])} "
        f"of pairs; largest distance difference {num(c['max_distance_difference'], 6)}.",
        "",
        "## 1:N identification (`/v1/face/register` + `/v1/face/identify`)",
        "",
        "One photo per identity registered (the first by file name), every other photo of it "
        "identified; one store per photo set. Rank-1: the nearest record is the right person; "
        "matched: also within identify's default threshold (stricter than verify's: see the "
        "open-set section).",
        "",
        table(["set", "identities", "probes", "rank-1", "matched", "no face"], [
            [name, s["identities"], s["probes"], pct(s["rank1"]), pct(s["matched"]), s["no_face"]]
            for name, s in r["rank1_by_set"].items()] +
            [["**all**", sum(s["identities"] for s in r["rank1_by_set"].values()),
              sum(s["probes"] for s in r["rank1_by_set"].values()), pct(r["rank1"]),
              pct(r["rank1_matched"]), sum(s["no_face"] for s in r["rank1_by_set"].values())]]),
        "",
        *openset_markdown(r),
        "## Liveness (`/v1/face/analyze` with `anti_spoofing`)",
        "",
        "APCER: spoofs accepted as real; BPCER: real faces refused. Refused: the backend's 400 "
        "\"cropped too tightly\" (too little context around the face for a verdict), not scored.",
        "",
        table(["set", "scored", "real / spoof", "accuracy", "APCER", "BPCER", "refused",
               "no face"], [
            [name, s["n"], f"{s['real']} / {s['spoof']}", pct(s["accuracy"]), pct(s["apcer"]),
             pct(s["bpcer"]), s["refused"], s["no_face"]]
            for name, s in r["liveness_by_set"].items()] +
            [["**all scored**", r["liveness_scored"], "", pct(r["liveness_accuracy"]),
              pct(r["liveness_apcer"]), pct(r["liveness_bpcer"]), "", ""]]),
        "",
        "## Age and gender (UTKFace, `/v1/face/analyze`)",
        "",
        f"{r['utkface_images']} images, {r['utkface_no_face']} without a detected face. The sample "
        f"is stratified by age band: {r['utkface_images'] - r['utkface_no_face'] - r['utkface_adults']}"
        f" of the faces found are under {low} or over {high}.",
        "",
        table(["", "gender accuracy", "age MAE (years)"], [
            [f"all ({r['utkface_images'] - r['utkface_no_face']})", pct(r["gender_accuracy"]),
             num(r["age_mae"])],
            [f"adults {low}-{high} ({r['utkface_adults']})", pct(r["gender_accuracy_adults"]),
             num(r["age_mae_adults"])],
        ]),
        "",
        "## Goals",
        "",
        goals_table(r["goals"]),
        "",
        f"Run time {r['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(out)


def write_accuracy_report(out_dir: pathlib.Path, results: dict, distances,
                          same, det_curves: dict) -> list[pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "accuracy.md"
    md.write_text(accuracy_markdown(results))
    return [md, write_json(out_dir / "accuracy.json", results),
            plot_det(out_dir / "det.png", det_curves, results["openset_by_n"]),
            plot_roc(out_dir / "roc.png", distances, same, results["default_threshold"]),
            plot_distances(out_dir / "distances.png", distances, same,
                           results["default_threshold"], results["lfw_eer_threshold"])]


# -- latency ----------------------------------------------------------------------

def latency_markdown(r: dict) -> str:
    floor = r["floor"]
    rows = []
    for op, by_c in r["http"].items():
        for c, s in by_c.items():
            ratio = s["p50_ms"] / floor[op]["p50_ms"] if floor.get(op) else float("nan")
            rows.append([op, c, num(s["p50_ms"]), num(s["p95_ms"]), num(s["rps"]),
                         num(ratio, 2) + "x" if str(c) == "1" else ""])
    peer = r["peer"]
    out = [
        f"# Latency of the face service ({r['model']})",
        "",
        f"{r['date']}, {r['cpu_count']} CPUs{', quick subset' if r['quick'] else ''}; "
        f"{r['requests_per_cell']} requests per cell over {r['pairs']} LFW pairs (fold 1); "
        "HTTP client on the same machine.",
        "",
        "## Through HTTP",
        "",
        table(["operation", "concurrency", "p50 ms", "p95 ms", "requests/s", "p50 vs floor"], rows),
        "",
        "## Floor: the same pipeline in-process (backend handlers, no server), one caller",
        "",
        "Each floor call alternates with an HTTP call at concurrency 1, so both columns see the "
        "same machine; with one caller, requests/s is 1 / mean latency.",
        "",
        table(["operation", "p50 ms", "p95 ms", "requests/s"],
              [[op, num(s["p50_ms"]), num(s["p95_ms"]), num(s["rps"])] for op, s in floor.items()]),
        "",
        table(["metric", "value"], [
            ["single-thread in-process verify rate",
             f"{num(r['floor_1thread_rps'], 2)} verifies/s"],
            ["machine limit (CPUs x that rate)", f"{num(r['machine_limit_rps'], 2)} verifies/s"],
            ["verify throughput at concurrency 4",
             f"{num(r['throughput_rps']['4'], 2)} verifies/s "
             f"({pct(r['throughput_c4_of_limit'])} of the limit)"],
            ["cold start: first verify after the gateway starts", f"{num(r['cold_first_ms'])} ms"],
            ["tenth verify", f"{num(r['cold_tenth_ms'])} ms (first/tenth "
                             f"{num(r['cold_start_ratio'])}x)"],
        ]),
        "",
        "## Peer: face_recognition (dlib HOG + ResNet), same pairs, one caller",
        "",
    ]
    if peer.get("skipped"):
        out += [f"Skipped: {peer['skipped']}", ""]
    else:
        out += [table(["", "verify p50 ms", "verify p95 ms", "accuracy on these pairs"], [
            ["service over HTTP (concurrency 1)", num(r["http"]["verify"]["1"]["p50_ms"]),
             num(r["http"]["verify"]["1"]["p95_ms"]), pct(r["service_accuracy_on_pairs"])],
            ["in-process floor", num(floor["verify"]["p50_ms"]), num(floor["verify"]["p95_ms"]),
             pct(r["floor_accuracy_on_pairs"])],
            [f"face_recognition, tolerance {peer['tolerance']}", num(peer["p50_ms"]),
             num(peer["p95_ms"]), pct(peer["accuracy"])],
        ]), ""]
    out += ["## Goals", "", goals_table(r["goals"]), "", f"Run time {r['seconds']:.0f} s.", ""]
    return "\n".join(out)


def write_latency_report(out_dir: pathlib.Path, results: dict) -> list[pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "latency.md"
    md.write_text(latency_markdown(results))
    return [md, write_json(out_dir / "latency.json", results)]
