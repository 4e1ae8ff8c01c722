"""The benchmarks' metrics and report writing, on synthetic numbers: no server, no peer."""
import json
import math
import pathlib

import numpy as np
import pytest

from bench import metrics, openset, report
from bench.accuracy import open_set, verification
from bench.datasets import Pair

# Overlapping on purpose: one genuine pair far (0.6), one impostor pair near (0.4).
GENUINE = [0.1, 0.2, 0.3, 0.6]
IMPOSTOR = [0.4, 0.7, 0.8, 0.9]
DISTANCES = GENUINE + IMPOSTOR
SAME = [True] * 4 + [False] * 4


def test_accuracy_and_best_threshold():
    assert metrics.accuracy(DISTANCES, SAME, 0.35) == 7 / 8
    assert metrics.accuracy(DISTANCES, SAME, 0.5) == 6 / 8  # accepts the near impostor
    best = metrics.best_threshold(DISTANCES, SAME)
    assert metrics.accuracy(DISTANCES, SAME, best) == 7 / 8
    assert best in (pytest.approx(0.35), pytest.approx(0.65))


def test_tar_at_far_and_eer():
    # 4 impostor pairs: FAR 0.25 allows one false accept, FAR 0.1 none.
    assert metrics.tar_at_far(DISTANCES, SAME, 0.25) == (1.0, 0.7)
    assert metrics.tar_at_far(DISTANCES, SAME, 0.1) == (0.75, 0.4)
    eer, threshold = metrics.equal_error_rate(DISTANCES, SAME)
    assert eer == 0.25 and threshold == pytest.approx(0.5)
    assert metrics.rates_at(DISTANCES, SAME, 0.5) == (0.25, 0.75)


def test_roc_is_monotonic_and_complete():
    thresholds, far, tar = metrics.roc(DISTANCES, SAME)
    assert np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    assert (far[0], tar[0], far[-1], tar[-1]) == (0, 0, 1, 1)


def test_kfold_picks_each_threshold_on_the_other_folds():
    # Fold 1 separates at 0.5, fold 2 at 0.25: fold 2 tested at fold 1's threshold loses half.
    d = [0.1, 0.2, 0.8, 0.9] + [0.1, 0.2, 0.3, 0.4]
    same = [True, True, False, False] * 2
    folds = [1] * 4 + [2] * 4
    out = metrics.kfold_accuracy(d, same, folds)
    assert out["fold_accuracies"] == [1.0, 0.5]
    assert out["mean"] == 0.75 and out["std"] == 0.25
    assert out["fold_thresholds"][0] == pytest.approx(0.25)


def test_liveness_rates_and_latency_summary():
    rates = metrics.liveness_rates([1, 1, 0, 0, 0], [1, 0, 0, 1, 0])
    assert rates["apcer"] == pytest.approx(1 / 3) and rates["bpcer"] == 0.5
    assert rates["accuracy"] == 0.6 and (rates["real"], rates["spoof"]) == (2, 3)
    assert math.isnan(metrics.liveness_rates([1], [1])["apcer"])  # no spoof to let through
    s = metrics.latency_summary([0.01 * i for i in range(1, 101)], wall_seconds=2.0)
    assert s["p50_ms"] == pytest.approx(505) and s["p95_ms"] == pytest.approx(950.5)
    assert s["rps"] == 50 and s["n"] == 100
    assert metrics.mean_absolute_error([10, 20], [13, 18]) == 2.5


def open_set_people(n_people: int = 12):
    """People with orthogonal base vectors; photos are their base plus a little noise.

    Every third person's vector is a near copy of the previous person's (a look-alike), so a
    threshold above their distance lets strangers match.
    """
    rng = np.random.default_rng(1)
    vectors, people = {}, []
    for i in range(n_people):
        base = np.eye(n_people)[i] if i % 3 else np.eye(n_people)[max(i - 1, 0)] * 0.8 + \
            np.eye(n_people)[i] * 0.6
        photos = [pathlib.Path(f"p{i}_{k}") for k in range(1 + i % 2)]
        for photo in photos:
            v = base + rng.normal(scale=0.01, size=n_people)
            vectors[photo] = v / np.linalg.norm(v)
        people.append((f"p{i}", photos))
    return vectors, people


def test_open_set_split_and_rates():
    vectors, people = open_set_people()
    gallery, mated, non_mated = openset.split(people)
    # one-photo people alternate gallery / never enrolled, and so do the others
    assert [n for n, _ in gallery] == ["p0", "p1", "p4", "p5", "p8", "p9"]
    assert [n for n, _ in mated] == ["p1", "p5", "p9"]
    assert [p.name for p in non_mated] == ["p2_0", "p3_0", "p6_0", "p7_0", "p10_0", "p11_0"]
    found = openset.evaluate(vectors, people, identify_threshold=0.1, verify_threshold=0.74)
    (row,) = found["rows"]  # fewer than 100 gallery entries: only "all"
    assert (row["N"], row["mated_probes"], row["non_mated_probes"]) == (6, 3, 6)
    assert row["fnir_at_identify_threshold"] == 0 and row["fpir_at_identify_threshold"] == 0
    # p3 and p6 are look-alikes of p2 / p5 (0.8 shared): p6 matches p5 at 0.74, p3 does not
    # have its twin p2 in the gallery
    assert row["fpir_at_verify_threshold"] == pytest.approx(1 / 6)
    assert row["fnir_at_fpir_0.01"] == 0
    fpir, fnir = found["curves"][6]
    assert fpir[0] == 0 and np.all(np.diff(fpir) >= 0) and np.all(np.diff(fnir) <= 0)


def accuracy_results(distances, pairs) -> dict:
    ident = {"identities": 3, "unregistered": 0, "probes": 4, "no_face": 0, "rank1": 0.75,
             "matched": 0.5, "hits": 3, "hits_matched": 2}
    live = {**metrics.liveness_rates([1, 0, 0], [1, 0, 1]), "refused": 2, "no_face": 0}
    return {
        "date": "2026-01-01T00:00:00+00:00", "cpu_count": 2, "quick": True, "model": "m",
        "default_threshold": 0.5, "lfw_images": 16, "lfw_no_face_images": 1,
        **verification(distances, pairs, 0.5),
        "rank1": 0.75, "rank1_matched": 0.5, "rank1_by_set": {"lfw_grey": ident},
        "liveness_accuracy": live["accuracy"], "liveness_apcer": live["apcer"],
        "liveness_bpcer": live["bpcer"], "liveness_scored": live["n"],
        "liveness_by_set": {"nuaa": live, "liveness_opencv_frames": {
            **metrics.liveness_rates([], []), "refused": 60, "no_face": 0}},
        "utkface_images": 4, "utkface_no_face": 0, "utkface_adults": 2,
        "utkface_adult_ages": [18, 60],
        "gender_accuracy": 0.75,
        "age_mae": 6.5, "gender_accuracy_adults": 1.0, "age_mae_adults": 3.0,
        "comparison": {"sample": "fold 1", "pairs": 4, "verify_endpoint_accuracy": 1.0,
                       "verify_endpoint_no_face": 0, "embed_endpoint_accuracy": 1.0,
                       "embed_endpoint_no_face": 0, "verify_embed_agreement": 1.0,
                       "max_distance_difference": 0.0, "inprocess_accuracy": 1.0,
                       "inprocess_no_face": 0, "peer_tolerance": 0.6, "peer_accuracy": None,
                       "peer_no_face": 0, "peer_skipped": "not installed"},
        "peer_lfw_accuracy": None, "goals": [report.goal("as good as in-process", True, "1 vs 1")],
        "seconds": 1.0,
        **open_set(*open_set_people(), identify_threshold=0.1)[0],
    }


def test_accuracy_report_files(tmp_path: pathlib.Path):
    pairs = [Pair(1 + i % 2, pathlib.Path(f"a{i}"), pathlib.Path(f"b{i}"), s)
             for i, s in enumerate(SAME * 2)]
    distances = np.array(DISTANCES * 2)
    distances[0] = metrics.NO_FACE_DISTANCE  # a pair whose image had no face
    results = accuracy_results(distances, pairs)
    curves = open_set(*open_set_people(), identify_threshold=0.1)[1]
    written = report.write_accuracy_report(tmp_path, results, distances, [p.same for p in pairs],
                                           curves)
    assert sorted(p.name for p in written) == ["accuracy.json", "accuracy.md", "det.png",
                                               "distances.png", "roc.png"]
    for png in ("roc.png", "distances.png", "det.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "accuracy.json").read_text())
    assert data["lfw_pairs"] == 16 and data["lfw_impostor_pairs"] == 8
    # at 0.5: the no-face pair, both 0.6 genuine and both 0.4 impostor pairs are wrong
    assert data["lfw_accuracy_at_default_threshold"] == 11 / 16
    assert data["liveness_by_set"]["liveness_opencv_frames"]["apcer"] is None  # NaN as null
    assert data["peer_lfw_accuracy"] is None and data["cpu_count"] == 2
    assert data["openset_fpir_at_default"] == {"6": 0.0}
    assert data["openset_fnir_at_fpir_1e-2"] == {"6": 0.0}
    md = (tmp_path / "accuracy.md").read_text()
    assert "68.75%" in md and "not installed" in md and "| PASS |" in md
    assert "| 6 | 3 / 6 | 0.00% | 0.00% | 0.00% | 0.00% | 16.67% |" in md
    assert "| liveness_opencv_frames | 0 |" in md and "| adults 18-60 (2) | 100.00% | 3.0 |" in md


def test_latency_report_files(tmp_path: pathlib.Path):
    cell = {"n": 8, "p50_ms": 30.0, "p95_ms": 40.0, "mean_ms": 31.0, "rps": 60.0, "no_face": 0}
    results = {
        "date": "2026-01-01T00:00:00+00:00", "cpu_count": 2, "quick": True, "model": "m",
        "pairs": 4, "requests_per_cell": 8,
        "http": {"verify": {"1": cell, "4": {**cell, "p50_ms": 60.0}}},
        "floor": {"verify": {**cell, "p50_ms": 25.0}},
        "floor_1thread_rps": 35.0, "machine_limit_rps": 70.0,
        "throughput_rps": {"1": 60.0, "4": 60.0},
        "throughput_c4_of_limit": 60 / 70, "cold_first_ms": 900.0, "cold_tenth_ms": 30.0,
        "cold_start_ratio": 30.0, "service_accuracy_on_pairs": 1.0, "floor_accuracy_on_pairs": 1.0,
        "peer": {"p50_ms": 400.0, "p95_ms": 450.0, "accuracy": 0.75, "tolerance": 0.6},
        "goals": [report.goal("within 1.15x", False, "1.20x")], "seconds": 2.0,
    }
    written = report.write_latency_report(tmp_path, results)
    assert sorted(p.name for p in written) == ["latency.json", "latency.md"]
    assert json.loads((tmp_path / "latency.json").read_text())["throughput_rps"]["4"] == 60.0
    md = (tmp_path / "latency.md").read_text()
    assert "| verify | 1 | 30.0 | 40.0 | 60.0 | 1.20x |" in md
    assert "85.71% of the limit" in md and "| MISS |" in md and "400.0" in md
