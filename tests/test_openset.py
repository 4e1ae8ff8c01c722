"""Identify's threshold policies and per-person grouping, on real configs and a real LocalStore."""
import math

import numpy as np
import pytest

from face_contract.errors import InvalidInput
from gallery.configs import read_config
from gateway.registry import openset, persons
from gateway.registry import LocalStore, Record
from gateway_support import write_config
from support import REAL_PACK_OPTIONS

CALIBRATED = openset.TABLES["MobileFaceNet"]


def config(tmp_path, options):
    return read_config(write_config(tmp_path, "m", options))


def decide(cfg, threshold=None, policy=None, fpir=None, gallery=1000):
    return openset.decide(cfg, "m", threshold, policy, fpir, lambda: gallery)


def test_the_real_pack_gets_its_calibrated_identify_threshold(tmp_path):
    d = decide(config(tmp_path, REAL_PACK_OPTIONS))
    assert (d.threshold, d.policy, d.source) == (CALIBRATED["identify_threshold"], "threshold",
                                                 "calibration")
    assert d.threshold < 0.74 and d.gallery_size is None  # stricter than the verify threshold


@pytest.mark.parametrize("options, threshold, source", [
    (["recognizer_onnx:MobileFaceNet.onnx", "identify_threshold:0.5"], 0.5, "identify_threshold"),
    (["model_pack:buffalo_l"], 0.35, "verify_threshold"),  # not calibrated here
    (["model_pack:buffalo_sc"], 0.40, "verify_threshold"),
    (["engine:opencv", "recognizer_onnx:face_recognition_sface_2021dec.onnx"], 0.50,
     "verify_threshold"),
    (["recognizer_onnx:custom.onnx", "verify_threshold:0.6"], 0.6, "verify_threshold"),
])
def test_identify_threshold_by_model(tmp_path, options, threshold, source):
    d = decide(config(tmp_path, options))
    assert (d.threshold, d.source) == (threshold, source)


def test_a_request_threshold_wins(tmp_path):
    d = decide(config(tmp_path, [*REAL_PACK_OPTIONS, "match_policy:fpir"]), threshold=0.3)
    assert (d.threshold, d.source, d.policy) == (0.3, "request", "threshold")


def test_fpir_threshold_tightens_as_the_gallery_grows(tmp_path):
    cfg = config(tmp_path, REAL_PACK_OPTIONS)
    small, large = (decide(cfg, policy="fpir", fpir=0.01, gallery=n) for n in (100, 10_000))
    assert small.threshold > large.threshold
    assert (large.policy, large.source, large.fpir, large.gallery_size) == ("fpir", "fpir", 0.01,
                                                                             10_000)


def test_fpir_threshold_is_the_impostor_quantile_of_the_per_comparison_rate():
    quantiles = [[1e-6, 0.5], [1e-4, 0.6], [1e-2, 0.7]]
    # 1 - (1 - f)^100 = 0.01  ->  f ~ 1.005e-4: just above the 1e-4 rung
    assert openset.fpir_threshold(quantiles, 0.01, 100) == pytest.approx(0.6, abs=1e-3)
    assert openset.fpir_threshold(quantiles, 0.01, 1) == pytest.approx(0.7, abs=1e-3)
    f = -math.expm1(math.log1p(-0.01) / 1000)  # ~1e-5: halfway in log between the rungs
    assert openset.fpir_threshold(quantiles, 0.01, 1000) == pytest.approx(
        0.5 + 0.1 * (math.log10(f) + 6) / 2)
    assert openset.fpir_threshold(quantiles, 0.01, 10 ** 9) == 0.5  # beyond the table: its end
    assert openset.fpir_threshold(quantiles, 0.01, 0) == openset.fpir_threshold(quantiles, 0.01, 1)


def test_model_options_set_the_policy_and_target(tmp_path):
    d = decide(config(tmp_path, [*REAL_PACK_OPTIONS, "match_policy:fpir", "fpir:0.05"]))
    assert (d.policy, d.fpir) == ("fpir", 0.05)
    assert decide(config(tmp_path, REAL_PACK_OPTIONS), fpir=0.02).policy == "fpir"
    assert decide(config(tmp_path, REAL_PACK_OPTIONS), policy="fpir").fpir == openset.DEFAULT_FPIR


@pytest.mark.parametrize("options, kwargs, words", [
    (REAL_PACK_OPTIONS, dict(threshold=0.5, policy="fpir"), "either threshold or match_policy"),
    (REAL_PACK_OPTIONS, dict(policy="threshold", fpir=0.01), "fpir needs match_policy fpir"),
    (["model_pack:buffalo_l"], dict(policy="fpir"), "impostor calibration"),
    ([*REAL_PACK_OPTIONS, "match_policy:nearest"], {}, "match_policy 'nearest'"),
])
def test_contradictions_are_400s_that_say_why(tmp_path, options, kwargs, words):
    with pytest.raises(InvalidInput, match=words):
        decide(config(tmp_path, options), **kwargs)


def test_calibration_table_is_monotone_and_recorded():
    rates = [q[0] for q in CALIBRATED["quantiles"]]
    distances = [q[1] for q in CALIBRATED["quantiles"]]
    assert rates == sorted(rates) and distances == sorted(distances)
    assert CALIBRATED["impostor_pairs"] > 1_000_000
    assert CALIBRATED["record"] == "bench/results/identify_calibration.json"


def NAME(record):
    return record.name


def test_group_by_name_keeps_each_persons_nearest_face(tmp_path):
    store = LocalStore(tmp_path / "s.sqlite3")
    rng = np.random.default_rng(0)
    probe = rng.normal(size=16)
    # "many" has ten faces nearer the probe than anyone else's; three others have one each
    for i in range(10):
        store.add(Record.new("many", {}, "m", probe + rng.normal(scale=0.05, size=16)))
    for name, scale in (("b", 0.5), ("c", 0.7), ("d", 0.9)):
        store.add(Record.new(name, {}, "m", probe + rng.normal(scale=scale, size=16)))
    faces = store.search("m", probe, 3)
    assert [r.name for r, _ in faces] == ["many"] * 3
    people = persons.nearest_by(store, "m", probe, 3, NAME)
    assert [r.name for r, _ in people] == ["many", "b", "c"]
    assert people[0][1] == faces[0][1]  # a person's distance is their nearest face's
    assert [r.name for r, _ in persons.nearest_by(store, "m", probe, 10, NAME)] == [
        "many", "b", "c", "d"]
    assert persons.nearest_by(store, "other", probe, 3, NAME) == []
    store.close()
