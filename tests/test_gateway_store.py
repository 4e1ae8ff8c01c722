"""The registry store: durable SQLite, exact cosine search per model, listing order."""
import re
import sqlite3

import numpy as np
import pytest

from face_contract.errors import FaceError, InvalidInput, NotReady
from gateway.store import Filters, LocalStore, Record, open_stores, require

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def unit(*values):
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def record(name, vector, model="m", labels=None):
    return Record.new(name, labels or {}, model, vector)


@pytest.fixture
def store(tmp_path):
    s = LocalStore(tmp_path / "local-store.sqlite3")
    yield s
    s.close()


def test_new_record_is_normalised_and_stamped():
    rec = record("ann", [3.0, 4.0])
    assert np.allclose(rec.embedding, [0.6, 0.8])
    assert rec.dimension == 2
    assert RFC3339_MS.match(rec.registered_at), rec.registered_at
    assert len(rec.id) == 36 and rec.id[14] == "4"  # UUID4


def test_zero_embedding_is_refused():
    with pytest.raises(FaceError, match="zero embedding"):
        record("nobody", [0.0, 0.0])


def test_sqlite_is_wal_and_fully_synchronous(store, tmp_path):
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_search_is_exact_cosine_ascending_and_per_model(store):
    a = record("a", unit(1, 0, 0))
    b = record("b", unit(1, 1, 0))
    c = record("c", unit(0, 0, 1))
    other = record("other-model", unit(1, 0, 0), model="n")
    for r in (a, b, c, other):
        store.add(r)
    hits = store.search("m", [2, 0, 0], top_k=5)
    assert [r.name for r, _ in hits] == ["a", "b", "c"]  # never the other model's record
    assert [d for _, d in hits] == pytest.approx([0.0, 1 - 1 / np.sqrt(2), 1.0], abs=1e-6)
    assert [r.name for r, _ in store.search("m", [1, 0, 0], top_k=2)] == ["a", "b"]
    assert store.search("unknown", [1, 0, 0], top_k=5) == []
    assert store.search("n", [1, 0, 0], top_k=5)[0][0].id == other.id


def test_records_survive_reopening(tmp_path):
    path = tmp_path / "s.sqlite3"
    first = LocalStore(path)
    kept = record("kept", unit(0.2, 0.9, 0.1), labels={"team": "blue"})
    gone = record("gone", unit(1, 0, 0))
    first.add(kept)
    first.add(gone)
    assert first.delete(gone.id) is True
    first.close()
    second = LocalStore(path)
    got = second.get(kept.id)
    assert (got.name, got.labels, got.model, got.dimension, got.registered_at) == \
        ("kept", {"team": "blue"}, "m", 3, kept.registered_at)
    assert second.get(gone.id) is None
    [(hit, distance)] = second.search("m", kept.embedding, top_k=5)
    assert hit.id == kept.id and distance == pytest.approx(0.0, abs=1e-6)
    second.close()


def test_a_committed_add_is_visible_to_another_connection(store, tmp_path):
    rec = record("durable", unit(1, 2, 3))
    store.add(rec)
    # A second connection (as after a crash) sees the row: it was committed, not only cached.
    other = sqlite3.connect(tmp_path / "local-store.sqlite3")
    row = other.execute("SELECT name FROM records WHERE id = ?", (rec.id,)).fetchone()
    assert row == ("durable",)
    other.close()


def test_delete_keeps_the_remaining_rows_searchable(store):
    recs = [record(f"r{i}", unit(*np.eye(4)[i])) for i in range(4)]
    for r in recs:
        store.add(r)
    assert store.delete(recs[1].id)
    assert not store.delete(recs[1].id)
    for r in (recs[0], recs[2], recs[3]):  # the last row moved into the hole and still matches
        assert store.search("m", r.embedding, top_k=1)[0][0].id == r.id
    assert store.count() == 3


def test_many_adds_grow_the_matrix(store):
    rng = np.random.default_rng(0)
    recs = [record(f"p{i}", rng.normal(size=8)) for i in range(40)]
    for r in recs:
        store.add(r)
    for r in recs[::7]:
        assert store.search("m", r.embedding, top_k=1)[0][0].id == r.id
    assert store.counts_by_model() == {"m": 40}


def test_dimension_mismatch_is_a_precondition_failure(store):
    store.add(record("a", unit(1, 0, 0)))
    with pytest.raises(NotReady, match="3-d"):
        store.add(record("b", unit(1, 0)))
    with pytest.raises(NotReady):
        store.search("m", [1, 0], top_k=1)


def test_listing_order_filters_and_paging(store):
    recs = [record(name, unit(1, i, 0), model=model)
            for i, (name, model) in enumerate([("x", "m"), ("y", "m"), ("x", "n"), ("z", "m")])]
    for i, r in enumerate(recs):
        r.registered_at = f"2024-01-01T00:00:0{i // 2}.000Z"  # pairs share a timestamp
        store.add(r)
    listed = store.list(Filters(), limit=10, offset=0)
    assert [r.id for r in listed] == [r.id for r in
                                      sorted(recs, key=lambda r: (r.registered_at, r.id))]
    assert all(r.embedding is None for r in listed)
    assert [r.name for r in store.list(Filters(model="m"), 10, 0)] == \
        [r.name for r in listed if r.model == "m"]
    assert {r.id for r in store.list(Filters(name="x"), 10, 0)} == {recs[0].id, recs[2].id}
    assert [r.id for r in store.list(Filters(), 2, 1)] == [r.id for r in listed[1:3]]
    assert store.count(Filters(model="m")) == 3 and store.count(Filters(name="x", model="n")) == 1


def test_stores_by_name(tmp_path):
    stores = open_stores(tmp_path, ["local-store", "staff"])
    assert require(stores, None) is stores["local-store"]
    assert require(stores, "staff") is stores["staff"]
    with pytest.raises(InvalidInput, match="unknown store 'nope'"):
        require(stores, "nope")
    stores["staff"].add(record("s", unit(1, 0)))
    assert stores["local-store"].count() == 0 and stores["staff"].count() == 1
    assert (tmp_path / "staff.sqlite3").exists()
    for s in stores.values():
        s.close()
