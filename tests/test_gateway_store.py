"""The registry stores over the VectorStore interface: one suite run on the local store and
on a real PostgreSQL + pgvector (started by the `postgres` session fixture)."""
import re
import sqlite3

import numpy as np
import psycopg
import pytest

from face_contract.errors import FaceError, InvalidInput, NotFound, NotReady
from gateway.registry import (Filters, LocalStore, PersonFilters, PgVectorStore, Record,
                              open_store, open_stores, require)

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def unit(*values):
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def record(name, vector, model="m", labels=None):
    return Record.new(name, labels or {}, model, vector)


@pytest.fixture(params=["local", "pgvector"])
def kind(request):
    return request.param


@pytest.fixture
def reopen(kind, tmp_path, request):
    """reopen() opens (another handle on) the same store: a restart, or a second gateway."""
    opened = []
    dsn = (request.getfixturevalue("postgres").fresh_database() if kind == "pgvector"
           else None)

    def reopen():
        for s in opened:  # a local store is single-writer: the previous handle goes first
            if kind == "local":
                s.close()
        opened.append(open_store("local-store", dsn, tmp_path))
        return opened[-1]
    yield reopen
    for s in opened:
        s.close()


@pytest.fixture
def store(reopen):
    return reopen()


def test_new_record_is_normalised_and_stamped():
    rec = record("ann", [3.0, 4.0])
    assert np.allclose(rec.embedding, [0.6, 0.8])
    assert rec.dimension == 2
    assert RFC3339_MS.match(rec.registered_at), rec.registered_at
    assert len(rec.id) == 36 and rec.id[14] == "4"  # UUID4


def test_zero_embedding_is_refused():
    with pytest.raises(FaceError, match="zero embedding"):
        record("nobody", [0.0, 0.0])


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


def test_records_survive_reopening(reopen):
    first = reopen()
    kept = record("kept", unit(0.2, 0.9, 0.1), labels={"team": "blue", "ünï": "cödé"})
    gone = record("gone", unit(1, 0, 0))
    first.add(kept)
    first.add(gone)
    assert first.delete(gone.id) is True
    second = reopen()
    got = second.get(kept.id)
    assert (got.name, got.labels, got.model, got.dimension, got.registered_at) == \
        ("kept", {"team": "blue", "ünï": "cödé"}, "m", 3, kept.registered_at)
    assert second.get(gone.id) is None
    [(hit, distance)] = second.search("m", kept.embedding, top_k=5)
    assert hit.id == kept.id and distance == pytest.approx(0.0, abs=1e-6)


def test_distances_are_the_exact_float32_ones(store):
    rng = np.random.default_rng(7)
    recs = [record(f"p{i}", rng.normal(size=64)) for i in range(120)]
    for r in recs:
        store.add(r)
    query = rng.normal(size=64).astype(np.float32)
    q = query / np.linalg.norm(query)
    exact = sorted(((1.0 - float(np.float32(r.embedding @ q)), r.id) for r in recs))[:10]
    hits = store.search("m", query, top_k=10)
    assert [r.id for r, _ in hits] == [i for _, i in exact]
    assert [d for _, d in hits] == pytest.approx([d for d, _ in exact], abs=1e-6)


def test_delete_keeps_the_remaining_rows_searchable(store):
    recs = [record(f"r{i}", unit(*np.eye(4)[i])) for i in range(4)]
    for r in recs:
        store.add(r)
    assert store.delete(recs[1].id)
    assert not store.delete(recs[1].id)
    assert not store.delete("not-a-uuid")
    for r in (recs[0], recs[2], recs[3]):
        assert store.search("m", r.embedding, top_k=1)[0][0].id == r.id
    assert recs[1].id not in {r.id for r, _ in store.search("m", recs[1].embedding, top_k=4)}
    assert store.count() == 3


def test_many_adds_and_deletes(store):
    rng = np.random.default_rng(0)
    recs = [record(f"p{i}", rng.normal(size=8)) for i in range(60)]
    for r in recs:
        store.add(r)
    for r in recs[:40:2]:  # enough forgets for the local matrix to compact itself
        assert store.delete(r.id)
    kept = [r for r in recs if r not in recs[:40:2]]
    for r in kept[::5]:
        assert store.search("m", r.embedding, top_k=1)[0][0].id == r.id
    assert len(store.search("m", recs[0].embedding, top_k=100)) == len(kept)
    assert store.counts_by_model() == {"m": len(kept)}


def test_dimension_mismatch_is_a_precondition_failure(store):
    first = record("a", unit(1, 0, 0))
    store.add(first)
    with pytest.raises(NotReady, match="3-d"):
        store.add(record("b", unit(1, 0)))
    with pytest.raises(NotReady):
        store.search("m", [1, 0], top_k=1)
    store.delete(first.id)  # an emptied model may change dimension
    store.add(record("c", unit(1, 0)))
    assert store.search("m", [1, 0], top_k=1)[0][0].name == "c"


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


@pytest.mark.parametrize("bad", [{"name": "\ud800"}, {"labels": {"k": "a\udfffb"}},
                                 {"labels": {"\ud800": "v"}}, {"name": "nul\x00"}])
def test_a_record_that_cannot_be_serialised_is_never_stored(store, bad):
    rec = record(bad.get("name", "ok"), unit(1, 0), labels=bad.get("labels"))
    with pytest.raises(InvalidInput, match="name|labels"):
        store.add(rec)
    assert store.count() == 0 and store.search("m", [1, 0], top_k=1) == []


def test_stores_by_name_and_dsn(tmp_path, postgres):
    dsn = postgres.fresh_database()
    stores = open_stores(tmp_path, {"local-store": None, "staff": None,
                                    "elsewhere": f"sqlite:///{tmp_path / 'x' / 'e.db'}",
                                    "shared": dsn}, default="shared")
    try:
        assert require(stores, None) is stores["shared"]
        assert isinstance(stores["shared"], PgVectorStore)
        assert isinstance(stores["elsewhere"], LocalStore)
        assert require(stores, "staff") is stores["staff"]
        with pytest.raises(InvalidInput, match="unknown store 'nope'"):
            require(stores, "nope")
        stores["staff"].add(record("s", unit(1, 0)))
        assert stores["local-store"].count() == 0 and stores["staff"].count() == 1
        assert (tmp_path / "staff.sqlite3").exists() and (tmp_path / "x" / "e.db").exists()
    finally:
        stores.close()
    assert require(open_stores(tmp_path / "d", ["a", "local-store"]), None).name == "local-store"


# -- persons --------------------------------------------------------------------------------

def faces_of(person_id, *vectors, name="ann", model="m", labels=None):
    return [Record.new(name, labels or {}, model, v, person_id=person_id) for v in vectors]


def test_a_set_of_faces_is_stored_whole_or_not_at_all(store):
    first, second = faces_of("p-1", unit(1, 0, 0), unit(0, 1, 0))
    second.id = first.id  # the second insert fails inside the transaction
    with pytest.raises(Exception):
        store.add_set([first, second], existing=False)
    assert store.count() == 0 and store.count_persons() == 0
    assert store.search("m", [1, 0, 0], top_k=5) == []
    with pytest.raises(NotFound, match="no person"):
        store.add_set(faces_of("nobody", unit(1, 0, 0)), existing=True)
    assert store.count() == 0


def test_person_operations(store):
    ann = faces_of("a", unit(1, 0, 0), unit(1, 0.1, 0), unit(1, 0, 0.1), labels={"team": "x"})
    store.add_set(ann, existing=False)
    bob = faces_of("b", unit(0, 1, 0), name="bob")
    store.add_set(bob, existing=False)
    other = faces_of("o", unit(0, 1, 0), name="annabel", model="n")
    store.add_set(other, existing=False)
    later = faces_of("a", unit(1, 0.2, 0), name="ignored: the person's name wins")
    store.add_set(later, existing=True)
    assert later[0].name == "ann"

    got = store.get_person("a")
    assert (got.name, got.labels, got.model, got.face_count) == ("ann", {"team": "x"}, "m", 4)
    assert [f.id for f in got.faces] == \
        [r.id for r in sorted(ann + later, key=lambda r: (r.registered_at, r.id))]
    assert store.count() == 6 and store.count_persons() == 3
    listed = store.list_persons(PersonFilters(name_prefix="ann"), 10, 0)
    assert [(p.name, p.face_count) for p in listed] == [("ann", 4), ("annabel", 1)]
    assert [p.person_id for p in store.list_persons(PersonFilters(model="m"), 1, 1)] == ["b"]
    assert store.count_persons(PersonFilters(model="m", name_prefix="an")) == 1
    with pytest.raises(InvalidInput, match="model 'n'"):
        store.add_set(faces_of("o", unit(1, 0, 0)), existing=True)

    renamed = store.update_person("b", "Robert", {"k": "v"})
    assert (renamed.name, renamed.labels, renamed.face_count) == ("Robert", {"k": "v"}, 1)
    assert store.get(bob[0].id).name == "Robert"
    assert store.update_person("nobody", "x", None) is None

    with pytest.raises(InvalidInput, match="one model"):
        store.merge_persons("a", ["o"])
    with pytest.raises(NotFound, match="'nobody'"):
        store.merge_persons("a", ["b", "nobody"])
    merged = store.merge_persons("a", ["b"])
    assert (merged.person_id, merged.face_count, merged.labels) == ("a", 5, {"team": "x", "k": "v"})
    assert store.get_person("b") is None and store.get(bob[0].id).person_id == "a"
    assert store.search("m", [0, 1, 0], top_k=1)[0][0].person_id == "a"

    split = store.move_face(bob[0].id, None)  # one entry was two people
    assert split.person_id != "a" and split.face_count == 1 and split.name == "ann"
    assert store.get_person("a").face_count == 4
    moved = store.move_face(bob[0].id, "a")
    assert moved.person_id == "a" and store.get_person(split.person_id) is None  # went with its face
    with pytest.raises(NotFound):
        store.move_face("no-face", "a")

    for face in store.get_person("o").faces:  # the last face takes its person with it
        assert store.delete(face.id)
    assert store.get_person("o") is None and store.count_persons() == 1

    assert store.delete_person("a") is True
    assert store.delete_person("a") is False
    assert store.count() == 0 and store.count_persons() == 0
    assert store.search("m", [1, 0, 0], top_k=10) == []


def test_a_forgotten_person_leaves_no_row_and_no_vector(kind, store, tmp_path):
    marker = np.asarray([0.123456789, -0.987654321, 0.5, 0.25] * 8, dtype=np.float32)
    kept = faces_of("k", unit(*range(1, 33)), name="kept")
    gone = faces_of("g", marker, marker + 0.01, name="gone")
    for i, face in enumerate(kept + gone):  # kept crops (--keep-crops) go with their faces too
        face.crop = f"crop of {face.person_id}{i}".encode() * 50
    store.add_set(kept, existing=False)
    store.add_set(gone, existing=False)
    assert store.delete_person("g")
    assert [r.person_id for r, _ in store.search("m", gone[0].embedding, top_k=10)] == ["k"]
    if kind == "local":
        raw = sqlite3.connect(store.path)
        assert raw.execute("SELECT COUNT(*) FROM records WHERE person_id = 'g'").fetchone() == (0,)
        assert raw.execute("SELECT COUNT(*) FROM persons WHERE person_id = 'g'").fetchone() == (0,)
        raw.close()
        files = [store.path, store.path.with_name(store.path.name + "-wal")]
        held = b"".join(f.read_bytes() for f in files if f.exists())
        for face in gone:  # not even in freed pages or the write-ahead log
            assert face.embedding.astype("<f4").tobytes() not in held
            assert face.crop[:40] not in held
        assert kept[0].embedding.astype("<f4").tobytes() in held and kept[0].crop in held
    else:
        with psycopg.connect(store._dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM face_records WHERE person_id = 'g'"
                                ).fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM face_persons WHERE person_id = 'g'"
                                ).fetchone() == (0,)
            crops = [bytes(c) for c, in conn.execute("SELECT crop FROM face_records")]
            assert crops == [kept[0].crop]
            conn.execute("SET enable_seqscan = off")  # what the model's HNSW index answers
            near = conn.execute(
                "SELECT person_id FROM face_records WHERE model = 'm' ORDER BY"
                " embedding::vector(32) <=> %s::vector(32) LIMIT 10",
                ("[" + ",".join(map(str, gone[0].embedding.tolist())) + "]",)).fetchall()
            assert near == [("k",)]


def test_merges_and_forgets_persist_and_are_seen_by_another_handle(reopen):
    first = reopen()
    first.add_set(faces_of("a", unit(1, 0)), existing=False)
    first.add_set(faces_of("b", unit(0, 1), name="bee"), existing=False)
    first.add_set(faces_of("c", unit(1, 1), name="sea"), existing=False)
    first.merge_persons("a", ["b"])
    first.delete_person("c")
    second = reopen()
    assert [(p.person_id, p.face_count) for p in second.list_persons(PersonFilters(), 10, 0)] == \
        [("a", 2)]
    assert {r.person_id for r, _ in second.search("m", [1, 1], top_k=5)} == {"a"}


def test_person_ids_and_filters_holding_nul_match_nothing(store):
    store.add_set(faces_of("a", unit(1, 0)), existing=False)
    assert store.get_person("a\x00") is None and store.delete_person("a\x00") is False
    assert store.update_person("a\x00", "x", None) is None
    with pytest.raises(NotFound):
        store.merge_persons("a", ["a\x00"])
    with pytest.raises(NotFound):
        store.move_face("f\x00", None)
    assert store.list_persons(PersonFilters(name_prefix="\x00"), 10, 0) == []
    assert store.count_persons(PersonFilters(model="m\x00")) == 0
    assert store.count_persons() == 1


def test_templates_of_another_recognizer_are_rebuilt_in_place(reopen):
    store = reopen()
    old, new = "sha256:old", "sha256:new"
    kept = [Record.new("ann", {}, "m", unit(1, i, 0), f"a{i}" if i else "a", old,
                       crop=b"png %d" % i) for i in range(3)]
    bare = Record.new("bob", {}, "m", unit(0, 1, 0), "b", old)  # registered without a crop
    unchecked = Record.new("cy", {}, "m", unit(0, 0, 1), "c", "")  # before fingerprints
    other_model = Record.new("di", {}, "n", unit(1, 0, 0), "d", old, crop=b"png")
    store.add_set(kept[:1], existing=False)
    for record in (*kept[1:], bare, unchecked, other_model):
        store.add(record)  # each its own person: merged below, the crops go along
    assert store.merge_persons("a", [r.person_id for r in kept[1:]]).face_count == 3

    stale = store.stale_faces("m", new, limit=2)  # in storage order: of one add, any two
    assert len(stale) == 2 and {(f.id, f.recognizer, f.dimension, f.crop) for f in stale} < \
        {(r.id, old, 3, r.crop) for r in kept}
    assert store.stale_counts("m", new) == (3, [bare.id])
    assert store.stale_faces("m", old, limit=10) == [] and store.stale_counts("m", old) == (0, [])

    rebuilt = [unit(0, 0.1 * i, 1) for i in range(2)]
    assert store.replace_embeddings("m", list(zip(stale, rebuilt)), new) == 2
    assert store.replace_embeddings("m", list(zip(stale, rebuilt)), new) == 0  # done already
    assert store.recognizers("m") == {old: 2, new: 2, "": 1}
    assert store.stale_counts("m", new) == (1, [bare.id])
    [last] = store.stale_faces("m", new, limit=5)
    assert last.id not in {f.id for f in stale}
    assert store.delete(last.id)  # forgotten between reading and writing: left alone
    assert store.replace_embeddings("m", [(last, unit(1, 1, 1))], new) == 0
    assert store.stale_counts("m", new) == (0, [bare.id])  # its crop went with it

    def nearest(handle):
        return [(r.id, round(d, 5)) for r, d in handle.search("m", [0, 0, 1], top_k=3)]
    found = nearest(store)
    assert sorted(found[:2]) == sorted([(unchecked.id, 0.0), (stale[0].id, 0.0)])
    assert found[2] == (stale[1].id, round(1 - 1 / np.sqrt(1.01), 5))
    assert nearest(reopen()) == found  # committed, not only in memory
