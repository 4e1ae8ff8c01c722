"""The pgvector store's own guarantees: no stale cache between replicas, the HNSW index
serves searches, outages answer 503 and the store reconnects by itself."""
import time

import numpy as np
import psycopg
import pytest

from face_contract.errors import Unavailable
from gateway.registry import Filters, PgVectorStore, Record, check_dsn
from gateway.registry.pgvector import MIGRATIONS, redacted


def rec(name, vector, model="m"):
    return Record.new(name, {}, model, vector)


@pytest.fixture
def dsn(postgres):
    return postgres.fresh_database()


def test_two_replicas_see_each_others_writes_at_once(dsn):
    one, two = PgVectorStore(dsn, "a"), PgVectorStore(dsn, "b")
    try:
        r = rec("shared", [0.1, 0.9, 0.3])
        one.add(r)
        assert two.search("m", r.embedding, top_k=1)[0][0].id == r.id
        assert two.count() == 1 and two.get(r.id).name == "shared"
        assert two.delete(r.id)
        assert one.search("m", r.embedding, top_k=1) == [] and one.get(r.id) is None
    finally:
        one.close()
        two.close()


def test_searches_use_the_models_hnsw_index(dsn):
    # With sequential scans priced out, a search that can use the partial HNSW index must.
    store = PgVectorStore(dsn + "&options=-c%20enable_seqscan%3Doff", "s")
    rng = np.random.default_rng(5)
    try:
        for i in range(50):
            store.add(rec(f"p{i}", rng.normal(size=16)))
        store.add(rec("other", rng.normal(size=8), model="n"))
        store.search("m", rng.normal(size=16), top_k=3)
    finally:
        store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        indexes = dict(conn.execute(
            "SELECT indexrelname, pg_get_indexdef(indexrelid) FROM pg_stat_user_indexes"
            " WHERE indexrelname LIKE 'face_hnsw_%'").fetchall())
        assert len(indexes) == 2 and all("hnsw" in d and "WHERE" in d for d in indexes.values())
        deadline = time.monotonic() + 10
        while True:  # statistics reach the view a moment after the search's transaction
            conn.execute("SELECT pg_stat_clear_snapshot()")
            scans = conn.execute("SELECT sum(idx_scan) FROM pg_stat_user_indexes"
                                 " WHERE indexrelname LIKE 'face_hnsw_%'").fetchone()[0]
            if scans or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert scans >= 1


def test_a_database_outage_is_a_503_and_the_store_reconnects(postgres, dsn):
    store = PgVectorStore(dsn, "s")
    kept = rec("kept", [1, 0, 0])
    store.add(kept)
    postgres.stop()
    try:
        for call in (lambda: store.add(rec("lost", [0, 1, 0])),
                     lambda: store.search("m", [1, 0, 0], top_k=1),
                     lambda: store.delete(kept.id)):
            started = time.monotonic()
            with pytest.raises(Unavailable, match="'s' .*unreachable"):
                call()
            assert time.monotonic() - started < 15
        late = PgVectorStore(dsn, "late")  # a gateway may start while the database is down
    finally:
        postgres.start()
    try:
        assert store.search("m", [1, 0, 0], top_k=1)[0][0].id == kept.id
        assert late.count() == 1
        store.add(rec("back", [0, 1, 0]))
        assert late.count(Filters(name="back")) == 1
    finally:
        store.close()
        late.close()


def test_a_dsn_password_is_never_shown():
    assert "s3cret" not in redacted("postgresql://face:s3cret@db.example:5432/faces")
    assert "db.example" in redacted("postgresql://face:s3cret@db.example:5432/faces")
    with pytest.raises(ValueError) as bad:
        check_dsn("x", "mysql://face:s3cret@db/faces")
    assert "s3cret" not in str(bad.value) and "postgresql://" in str(bad.value)


def test_a_version_1_database_gains_persons_and_keeps_every_record(dsn):
    old = [rec(f"o{i}", np.eye(3)[i] + 0.1) for i in range(3)]
    with psycopg.connect(dsn, autocommit=True) as conn:  # today's (version 1) schema
        conn.execute("CREATE TABLE face_schema (version integer)")
        for statement in MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO face_schema VALUES (1)")
        conn.execute("INSERT INTO face_models VALUES ('m', 3)")
        conn.execute("CREATE INDEX face_hnsw_old ON face_records USING hnsw"
                     " ((embedding::vector(3)) vector_cosine_ops) WHERE model = 'm'")
        for r in old:
            conn.execute("INSERT INTO face_records VALUES (%s, %s, '{\"k\": \"v\"}', 'm', 3,"
                         " %s::vector, %s)", (r.id, r.name, str(r.embedding.tolist()),
                                              r.registered_at))
    store = PgVectorStore(dsn, "s")
    try:
        assert [r.id for r in store.list(Filters(), 10, 0)] == \
            [r.id for r in sorted(old, key=lambda r: (r.registered_at, r.id))]
        for r in old:
            assert store.search("m", r.embedding, top_k=1)[0][0].person_id == r.id
            person = store.get_person(r.id)
            assert (person.name, person.labels, person.face_count) == (r.name, {"k": "v"}, 1)
        assert store.delete(old[0].id) and store.get_person(old[0].id) is None
        assert store.delete_person(old[1].id) and store.count() == 1
        store.add(rec("new", [0, 1, 1]))
        assert store.count_persons() == 2
    finally:
        store.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT max(version) FROM face_schema").fetchone() == (2,)


def test_two_replicas_see_each_others_merges_and_forgets_at_once(dsn):
    one, two = PgVectorStore(dsn, "a"), PgVectorStore(dsn, "b")
    try:
        a, b = rec("ann", [1, 0.1]), rec("ann too", [1, 0.2])
        one.add(a)
        one.add(b)
        two.merge_persons(a.person_id, [b.person_id])
        assert one.search("m", [1, 0.2], top_k=1)[0][0].person_id == a.person_id
        assert one.get_person(a.person_id).face_count == 2 and one.get_person(b.person_id) is None
        two.delete_person(a.person_id)
        assert one.search("m", [1, 0.2], top_k=2) == [] and one.count_persons() == 0
    finally:
        one.close()
        two.close()
