"""The aggregation rules of person-level identify, and the benchmark that chose among them."""
import pathlib

import numpy as np
import pytest

from bench import persons as bench
from gateway.registry import LocalStore, Record
from gateway.registry.persons import RULES, nearest_persons


def unit(*rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_each_rule_makes_a_persons_distance_from_their_faces():
    faces = unit([1, 0], [0, 1])
    probe = unit([1, 0])
    assert RULES["best"](faces, probe) == pytest.approx([0.0])
    assert RULES["mean"](faces, probe) == pytest.approx([0.5])
    assert RULES["template"](faces, probe) == pytest.approx([1 - np.sqrt(0.5)])


def test_the_benchmark_scores_rules_on_enrolled_and_stranger_probes():
    rng = np.random.default_rng(0)
    centres = unit(*rng.normal(size=(30, 16)))
    vectors, people = {}, []
    for i, centre in enumerate(centres):  # 10 people with 8 photos, 20 strangers with 1
        photos = [pathlib.Path(f"p{i}-{j}") for j in range(8 if i < 10 else 1)]
        for photo in photos:
            noisy = centre + 0.1 * rng.normal(size=16)
            vectors[photo] = noisy / np.linalg.norm(noisy)
        people.append((f"p{i}", photos))
    r = bench.evaluate(vectors, people)
    assert (r["people"], r["mated_probes"], r["non_mated_probes"]) == (10, 30, 20)
    assert [(row["photos_per_person"], row["rule"]) for row in r["rows"]] == \
        [(1, "best")] + [(k, rule) for k in (3, 5) for rule in RULES]
    for row in r["rows"]:
        assert 0.0 <= row["fnir_at_fpir_1%"] <= 1.0 and row["rank1"] > 0.9  # well separated
    assert "| 5 | template |" in bench.markdown(r)


def test_nearest_persons_gives_one_row_per_person_by_their_template(tmp_path):
    store = LocalStore(tmp_path / "s.sqlite3")
    rng = np.random.default_rng(1)
    probe = rng.normal(size=16).astype(np.float32)
    many = [Record.new("many", {}, "m", probe + rng.normal(scale=0.3, size=16), "p-many")
            for _ in range(10)]
    store.add_set(many, existing=False)
    for name, scale in (("b", 0.6), ("c", 0.9)):
        store.add(Record.new(name, {}, "m", probe + rng.normal(scale=scale, size=16)))
    found = nearest_persons(store, "m", probe, 5)
    assert [(m.nearest.name, m.faces) for m in found] == [("many", 10), ("b", 1), ("c", 1)]
    assert len({m.person_id for m in found}) == 3
    template = np.mean([r.embedding for r in many], axis=0)
    expected = 1 - float(template @ (probe / np.linalg.norm(probe))) / np.linalg.norm(template)
    assert found[0].distance == pytest.approx(expected, abs=1e-6)
    assert found[0].nearest.id == store.search("m", probe, 1)[0][0].id  # its nearest face
    assert [m.nearest.name for m in nearest_persons(store, "m", probe, 1)] == ["many"]
    assert nearest_persons(store, "other", probe, 3) == []
    store.close()
