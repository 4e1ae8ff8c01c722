"""The store benchmark's own logic: the cluster model, its fit, recall, and one tiny run."""
import argparse

import numpy as np
import pytest

from bench import store_bench as sb


def test_the_fit_recovers_distances_of_a_known_model():
    rng = np.random.default_rng(4)
    known = {"alpha": 0.6, "sigma": 0.9, "kappa": 0.2}
    measured = sb.synthetic_distances(rng, known, 128, pairs=4000)
    fitted = sb.synthetic_distances(rng, sb.fit(measured), 128, pairs=4000)
    for key in ("genuine_mean", "genuine_std", "impostor_mean"):
        assert fitted[key] == pytest.approx(measured[key], abs=0.02), key


def test_exact_nearest_is_the_argmax_over_chunks():
    rng = np.random.default_rng(2)
    vectors, queries = rng.normal(size=(250_000, 8)), rng.normal(size=(5, 8))
    assert list(sb.exact_nearest(vectors, queries)) == [int(np.argmax(vectors @ q))
                                                        for q in queries]


def test_recall_counts_the_genuine_match_where_exact_search_finds_it():
    truth = np.array([3, 5, 7, 9])
    exact = np.array([3, 5, 1, 9])  # exact search misses the third genuine match itself
    assert sb.recall([3, 2, 1, 9], exact, truth) == pytest.approx(2 / 3)
    assert sb.recall([4, 5], np.array([4, 6]), np.array([-1, -1])) == 0.5  # random vectors


def test_a_tiny_run_measures_both_local_stores(monkeypatch):
    monkeypatch.setattr(sb, "QUERIES", 20)
    rows = sb.bench_one("clusters", 3000, 32, argparse.Namespace(pg_max=0, ann_max=3000), None)
    exact, ann = rows
    assert (exact["store"], ann["store"]) == ("local exact", "local ANN")
    assert exact["recall"] == 1.0 and ann["recall"] >= 0.9
    assert exact["bare_matmul_p50_ms"] > 0 and exact["p50_ms"] > 0 and ann["startup_s"] > 0
