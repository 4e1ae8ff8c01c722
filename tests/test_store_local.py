"""The local store's own guarantees: single writer, a disk that refuses writes, records an
older version wrote, schema migration and the optional approximate index."""
import contextlib
import json
import sqlite3
import subprocess
import sys

import httpx
import numpy as np
import pytest

from face_contract.errors import Unavailable, http_status_for
from gateway.app import create_app
from gateway.settings import Settings
from gateway.registry import Filters, LocalStore, Record, StoreInUse
from gateway.registry.local import SCHEMA
from gateway_support import app_server
from support import ROOT


def rec(name, vector, model="m", labels=None):
    return Record.new(name, labels or {}, model, vector)


def test_sqlite_is_wal_and_fully_synchronous(tmp_path):
    store = LocalStore(tmp_path / "s.sqlite3")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path):
    first = LocalStore(tmp_path / "local-store.sqlite3")
    with pytest.raises(StoreInUse) as refused:
        LocalStore(tmp_path / "local-store.sqlite3")
    message = str(refused.value)
    assert str(tmp_path) in message and "pgvector" in message and "single-writer" in message
    first.close()
    LocalStore(tmp_path / "local-store.sqlite3").close()


def test_a_second_gateway_on_the_same_data_dir_refuses_to_start(tmp_path):
    held = LocalStore(tmp_path / "data" / "local-store.sqlite3")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "--models-dir", str(tmp_path / "models"),
             "--data-dir", str(tmp_path / "data"), "--port", "1"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        held.close()
    assert out.returncode != 0
    assert "in use by another gateway" in out.stderr and str(tmp_path / "data") in out.stderr
    assert "Traceback" not in out.stderr


@contextlib.contextmanager
def tiny_disk(path, size="1m"):  # room for some 20 records and their indexes
    """A real filesystem that fills up and can be made read-only (tmpfs; needs root)."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def remount(path, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def test_a_full_or_read_only_disk_answers_unavailable_and_corrupts_nothing(tmp_path):
    rng = np.random.default_rng(3)
    with tiny_disk(tmp_path / "disk") as disk:
        store = LocalStore(disk / "s.sqlite3")
        stored = []
        assert http_status_for(Unavailable.grpc_code) == (503, "unavailable")  # the one map
        with pytest.raises(Unavailable, match="cannot write to its disk"):
            for i in range(10_000):
                r = rec(f"p{i}", rng.normal(size=512))
                store.add(r)
                stored.append(r)
        assert len(stored) > 10 and store.count() == len(stored)
        for r in stored[::7]:  # everything acknowledged is still there and searchable
            assert store.search("m", r.embedding, top_k=1)[0][0].id == r.id

        store.close()

        remount(disk, "ro")  # (a mount with files open for writing cannot turn read-only)
        store = LocalStore(disk / "s.sqlite3")
        with pytest.raises(Unavailable, match="cannot write to its disk"):
            store.add(rec("late", rng.normal(size=512)))
        with pytest.raises(Unavailable):
            store.delete(stored[0].id)
        assert store.get(stored[0].id) is not None  # a failed forget forgot nothing
        assert store.search("m", stored[0].embedding, top_k=1)[0][0].id == stored[0].id
        assert len(store.list(Filters(), 10_000, 0)) == len(stored)
        store.close()

        remount(disk, "rw,size=4m")  # writable, with room again
        store = LocalStore(disk / "s.sqlite3")
        for r in stored[:5]:
            assert store.delete(r.id)
        store.add(rec("after", rng.normal(size=512)))
        store.close()
        check = sqlite3.connect(disk / "s.sqlite3")
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert check.execute("SELECT COUNT(*) FROM records").fetchone() == (len(stored) - 4,)
        check.close()


def write_poison(path):
    """Rows an older version could write: labels holding a JSON \\ud800 escape, a name that is
    not UTF-8 at all, and an embedding blob of the wrong length."""
    db = sqlite3.connect(path)
    vec = (np.ones(4, np.float32) / 2).tobytes()
    db.execute("INSERT INTO records (id, name, labels, model, dimension, embedding,"
               " registered_at) VALUES ('poison-labels', 'p', ?, 'm', 4, ?,"
               " '2020-01-01T00:00:00.000Z')", ('{"k": "\\ud800"}', vec))
    db.execute("INSERT INTO records (id, name, labels, model, dimension, embedding,"
               " registered_at) VALUES ('poison-name', CAST(X'ff41' AS TEXT), '{}', 'm', 4, ?,"
               " '2020-01-01T00:00:01.000Z')", (vec,))
    db.execute("INSERT INTO records (id, name, labels, model, dimension, embedding,"
               " registered_at) VALUES ('poison-blob', 'b', '{}', 'm', 4, X'0102',"
               " '2020-01-01T00:00:02.000Z')")
    db.commit()
    db.close()


def test_poison_records_an_older_version_wrote_are_listed_found_and_forgotten(tmp_path):
    path = tmp_path / "data" / "local-store.sqlite3"
    store = LocalStore(path)
    good = rec("good", [1, 0, 0, 0])
    store.add(good)
    store.close()
    write_poison(path)

    app = create_app(Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data"))
    with app_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        listing = client.get("/v1/face/registry")
        assert listing.status_code == 200, listing.text
        items = {item["id"]: item for item in listing.json()["items"]}
        assert listing.json()["total"] == 4 and set(items) >= {"poison-labels", "poison-name"}
        assert items["poison-labels"]["labels"] == {"k": "\ufffd"}
        assert items["poison-name"]["name"] == "\ufffdA"
        store = app.state.gateway.stores["local-store"]
        hits = store.search("m", [1, 1, 1, 1], top_k=5)  # the poison rows are found, readable
        assert {r.id for r, _ in hits} == {"poison-labels", "poison-name", good.id}
        json.dumps([r.name for r, _ in hits], ensure_ascii=False).encode("utf-8")
        for poison in ("poison-labels", "poison-name", "poison-blob"):
            assert client.post("/v1/face/forget", json={"id": poison}).status_code == 204
        assert [i["id"] for i in client.get("/v1/face/registry").json()["items"]] == [good.id]
        assert store.search("m", [1, 1, 1, 1], top_k=5)[0][0].id == good.id


def migrated(path, old) -> LocalStore:
    """The store at path, opened (so migrated): every old record listed and found."""
    store = LocalStore(path)
    assert store._db.execute("PRAGMA user_version").fetchone() == (3,)
    assert [r.id for r in store.list(Filters(), 10, 0)] == \
        [r.id for r in sorted(old, key=lambda r: (r.registered_at, r.id))]
    for r in old:
        assert store.search("m", r.embedding, top_k=1)[0][0].id == r.id
    return store


def test_a_version_1_file_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE records (id TEXT PRIMARY KEY, name TEXT NOT NULL, labels TEXT"
               " NOT NULL, model TEXT NOT NULL, dimension INTEGER NOT NULL, embedding BLOB"
               " NOT NULL, registered_at TEXT NOT NULL)")
    db.execute("CREATE INDEX records_order ON records (registered_at, id)")
    old = [rec(f"o{i}", np.eye(3)[i] + 0.1) for i in range(3)]
    for r in old:
        db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (r.id, r.name, "{}", r.model, 3, r.embedding.tobytes(), r.registered_at))
    db.commit()
    db.close()
    store = migrated(path, old)
    store.add(rec("new", [0, 1, 1]))
    assert store.count() == 4
    store.close()


def clusters(rng, identities, per_identity, dim):
    centres = rng.normal(size=(identities, dim))
    return [rec(f"id{i}", centres[i] + 0.35 * rng.normal(size=dim))
            for i in range(identities) for _ in range(per_identity)]


def exact_top(records, query, k):
    q = query / np.linalg.norm(query)
    return [r.id for r in sorted(records, key=lambda r: 1 - float(r.embedding @ q))[:k]]


def test_the_approximate_index_is_built_saved_and_caught_up(tmp_path):
    rng = np.random.default_rng(11)
    path = tmp_path / "s.sqlite3"
    records = clusters(rng, 60, 3, 32)
    store = LocalStore(path, ann_threshold=100)
    for r in records:
        store.add(r)
    store.wait_for_indexes(timeout=60)
    assert store._models["m"].ann is not None  # built in the background past the threshold
    for r in records[::9]:
        hits = store.search("m", r.embedding + 0.05 * rng.normal(size=32), top_k=3)
        assert [h.id for h, _ in hits][:1] == exact_top(records, r.embedding + 0, 1)
        assert [d for _, d in hits] == sorted(d for _, d in hits)
    store.close()
    [saved] = tmp_path.glob("s.sqlite3.*.usearch")

    # Changed while the index was off: the saved index is stale and must be reconciled.
    plain = LocalStore(path)
    gone = records[:30]
    for r in gone:
        plain.delete(r.id)
    added = clusters(rng, 10, 2, 32)
    for r in added:
        plain.add(r)
    plain.close()
    store = LocalStore(path, ann_threshold=100)
    store.wait_for_indexes(timeout=60)
    live = records[30:] + added
    for r in added + records[30::15]:
        assert store.search("m", r.embedding, top_k=1)[0][0].id == r.id
    gone_ids = {r.id for r in gone}
    for r in gone[::5]:
        assert not gone_ids & {h.id for h, _ in store.search("m", r.embedding, top_k=10)}
    assert store.counts_by_model() == {"m": len(live)} and saved.exists()
    store.close()


def test_a_version_2_file_gains_persons_and_keeps_every_record(tmp_path):
    path = tmp_path / "v2.sqlite3"
    db = sqlite3.connect(path)
    for statement in SCHEMA:  # today's (version 2) statements
        db.execute(statement)
    old = [rec(f"o{i}", np.eye(3)[i] + 0.1, labels={"n": str(i)}) for i in range(3)]
    for r in old:
        db.execute("INSERT INTO records (id, name, labels, model, dimension, embedding,"
                   " registered_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (r.id, r.name, json.dumps(r.labels), r.model, 3, r.embedding.tobytes(),
                    r.registered_at))
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    store = migrated(path, old)
    for r in old:  # one registration = one person, found and forgettable
        assert store.search("m", r.embedding, top_k=1)[0][0].person_id == r.id
        person = store.get_person(r.id)
        assert (person.name, person.labels, person.face_count) == (r.name, r.labels, 1)
    assert store.count_persons() == 3
    assert store.delete(old[0].id) and store.get_person(old[0].id) is None
    assert store.delete_person(old[1].id) and store.count() == 1
    store.close()
