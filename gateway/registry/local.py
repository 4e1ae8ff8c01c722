"""The local store: one SQLite file, single-writer, exact (and optionally approximate) search.

SQLite (WAL, synchronous=FULL) holds every record: a registration is committed before
its 200. At open the embeddings are read in bulk into one float32 matrix per model; the
rest of a record stays in SQLite and is read for the top-k only, so memory is the
vectors plus 8 bytes of key per record. An exclusive lock beside the file keeps a second
gateway out: two writers would each search a matrix missing the other's records.
"""
import fcntl
import hashlib
import logging
import os
import pathlib
import sqlite3
import threading
import uuid

import numpy as np

from face_contract.errors import NotFound, NotReady, Unavailable

from .ann import AnnIndex
from .base import (Filters, Person, PersonFilters, Record, Stale, VectorStore, check_merge,
                   check_person, grouped, labels_json, merged_labels, one_person, person_prefix,
                   ranked, read_labels, readable, unit_query, where)
from .exact import ExactIndex

log = logging.getLogger("gateway.store")

SCHEMA_VERSION = 3
SCHEMA = [
    # seq: never reused (AUTOINCREMENT), so it can key the in-memory rows and the saved
    # approximate index; id: the public uuid.
    "CREATE TABLE IF NOT EXISTS records ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
    " labels TEXT NOT NULL, model TEXT NOT NULL, dimension INTEGER NOT NULL,"
    " embedding BLOB NOT NULL, registered_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS records_order ON records (registered_at, id)",
    "CREATE INDEX IF NOT EXISTS records_model ON records (model, seq)",
]
# Version 3, one step for the issues that changed the stores together.
SCHEMA_3_PERSONS = [  # -- persons (issue 17): every old record becomes a person of its own
    "CREATE TABLE persons (person_id TEXT PRIMARY KEY, model TEXT NOT NULL,"
    " name TEXT NOT NULL, labels TEXT NOT NULL, created_at TEXT NOT NULL)",
    "CREATE INDEX persons_listing ON persons (model, name, person_id)",
    "ALTER TABLE records ADD COLUMN person_id TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE records ADD COLUMN recognizer TEXT NOT NULL DEFAULT ''",  # '': before 17
    # The aligned face a template can be rebuilt from; in this step so that --keep-crops
    # (not built yet) needs no second migration. NULL: not kept.
    "ALTER TABLE records ADD COLUMN crop BLOB",
    "UPDATE records SET person_id = id",
    "INSERT INTO persons SELECT id, model, name, labels, registered_at FROM records",
    "CREATE INDEX records_person ON records (person_id, registered_at, id)",
    "CREATE INDEX records_recognizer ON records (model, recognizer)",
]
SCHEMA_3 = [*SCHEMA_3_PERSONS]
LOAD_BATCH = 65536
FIELDS = "id, name, labels, model, dimension, registered_at, person_id, recognizer"
# Faces of a model (?) that another recognizer (?) made; "": made before fingerprints, unchecked.
STALE = "model = ? AND recognizer NOT IN ('', ?)"
PERSON_FIELDS = ("person_id, model, name, labels, created_at,"
                 " (SELECT COUNT(*) FROM records r WHERE r.person_id = p.person_id)")


class StoreOpenError(RuntimeError):
    """A store that cannot be opened as configured (the gateway refuses to start)."""


class StoreInUse(StoreOpenError):
    """Another process holds the local store."""


def _write_failure(store: str, exc: sqlite3.Error) -> Exception:
    """A write the disk refused (read-only, full, I/O error) is the service being unavailable,
    not the client's mistake; anything else is a bug and stays a 500."""
    code = getattr(exc, "sqlite_errorname", "")
    if code.startswith(("SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                        "SQLITE_BUSY", "SQLITE_PERM")):
        return Unavailable(f"the registry store '{store}' cannot write to its disk ({exc}); "
                           "nothing was changed")
    return exc


def _record(row) -> Record:
    return Record(id=row[0], name=readable(row[1]), labels=read_labels(row[2]),
                  model=readable(row[3]), dimension=row[4], registered_at=readable(row[5]),
                  person_id=row[6], recognizer=row[7])


def _person(row, faces=None) -> Person:
    return Person(person_id=row[0], model=readable(row[1]), name=readable(row[2]),
                  labels=read_labels(row[3]), created_at=row[4], face_count=row[5], faces=faces)


class _Model:
    def __init__(self, exact: ExactIndex):
        self.exact = exact
        self.ann: AnnIndex | None = None
        self.building = False


class LocalStore(VectorStore):
    def __init__(self, path: pathlib.Path, name: str | None = None,
                 ann_threshold: int | None = None):
        path = pathlib.Path(path)
        self.name = name or path.stem
        self.path = path
        self.ann_threshold = ann_threshold
        path.parent.mkdir(parents=True, exist_ok=True)
        # On a read-only disk the store still answers reads; every write is a 503.
        read_only = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
        self._lock_fd = self._take_lock(path, read_only)
        self._lock = threading.Lock()
        self._closed = False
        self._builds: list[threading.Thread] = []
        if read_only:
            log.warning("store %s: %s is on a read-only disk: reads only, writes answer 503",
                        self.name, path)
            # A write-ahead log left behind (its checkpoint failed) holds committed records and
            # must be read; without one, immutable spares creating files on the read-only disk.
            wal = path.with_name(path.name + "-wal")
            mode = "mode=ro" if wal.exists() and wal.stat().st_size else "mode=ro&immutable=1"
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True,
                                       check_same_thread=False, isolation_level=None)
        else:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # A forgotten face leaves no bytes behind in the file (freed pages are zeroed).
            self._db.execute("PRAGMA secure_delete=ON")
            self._migrate()
        # Text an older writer stored as invalid UTF-8 is read with U+FFFD, never an exception.
        self._db.text_factory = lambda raw: raw.decode("utf-8", "replace")
        if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            raise StoreOpenError(f"the local store {path} is read-only and needs a schema "
                                 "upgrade: open it once on a writable disk")
        self._models: dict[str, _Model] = {}
        self._load()

    @staticmethod
    def _take_lock(path: pathlib.Path, read_only: bool) -> int:
        lock_path = path.with_name(path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDONLY if read_only else os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreOpenError(f"the local store {path} cannot be opened: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreInUse(
                f"the local store {path.name} in {path.parent} is in use by another gateway "
                f"(pid {holder}): a local store is single-writer. Run one gateway per data "
                "dir, or share a pgvector store between gateways "
                "(--store NAME=postgresql://...).") from None
        if not read_only:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        return fd

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            old = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'records'"
                                   " AND type = 'table'").fetchone()
            if old and version < 2:  # version 1: id was the primary key, no seq
                self._db.execute("DROP INDEX IF EXISTS records_order")
                self._db.execute("ALTER TABLE records RENAME TO records_v1")
            for statement in SCHEMA:
                self._db.execute(statement)
            if old and version < 2:
                self._db.execute(
                    "INSERT INTO records (id, name, labels, model, dimension, embedding,"
                    " registered_at) SELECT id, name, labels, model, dimension, embedding,"
                    " registered_at FROM records_v1 ORDER BY registered_at, id")
                self._db.execute("DROP TABLE records_v1")
            if version < 3:
                for statement in SCHEMA_3:
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _load(self) -> None:
        """Every model's embeddings, straight from the blobs into a preallocated matrix."""
        groups = self._db.execute(
            "SELECT model, dimension, COUNT(*) FROM records"
            " WHERE length(embedding) = 4 * dimension GROUP BY model, dimension").fetchall()
        for model, dimension, count in groups:
            if model in self._models:  # an older writer mixed dimensions: keep the first
                log.warning("store %s: model %r has %d-d and %d-d records; searching the "
                            "%d-d ones", self.name, model, self._models[model].exact.dimension,
                            dimension, self._models[model].exact.dimension)
                continue
            exact = ExactIndex(dimension, capacity=count + max(1024, count // 16))
            rows = self._db.execute(
                "SELECT seq, embedding FROM records WHERE model = ? AND dimension = ?"
                " AND length(embedding) = 4 * dimension ORDER BY seq", (model, dimension))
            while batch := rows.fetchmany(LOAD_BATCH):
                keys = np.fromiter((r[0] for r in batch), np.int64, len(batch))
                vectors = np.frombuffer(b"".join(r[1] for r in batch), "<f4")
                exact.append(keys, vectors.reshape(len(batch), dimension))
            self._models[model] = _Model(exact)
            self._start_ann(model)

    # -- the approximate index ------------------------------------------------------------

    def _ann_path(self, model: str) -> pathlib.Path:
        slug = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return self.path.with_name(f"{self.path.name}.{slug}.usearch")

    def _start_ann(self, model: str) -> None:
        """Build (or load and catch up) the model's approximate index in the background once
        the model has ann_threshold records; searches stay exact until it is ready."""
        state = self._models[model]
        if (self.ann_threshold is None or state.ann is not None or state.building
                or state.exact.live < self.ann_threshold):
            return
        state.building = True
        thread = threading.Thread(target=self._build_ann, args=(model, state),
                                  name=f"ann-{model}", daemon=True)
        self._builds.append(thread)
        thread.start()

    def _build_ann(self, model: str, state: _Model) -> None:
        try:
            ann = AnnIndex.load(self._ann_path(model), state.exact.dimension)
            with self._lock:
                size = state.exact.size  # rows below this are not moved while building
            ann.fill(state.exact, size)
            with self._lock:
                if self._closed or self._models.get(model) is not state:
                    return
                ann.reconcile(state.exact)
                state.ann = ann
                ann.save()
        except Exception:  # a failed build leaves search exact, which is always correct
            log.exception("store %s: building the approximate index of %r failed",
                          self.name, model)
        finally:
            state.building = False

    def wait_for_indexes(self, timeout: float | None = None) -> None:
        """Block until background index builds are done (start-up benchmarks, tests)."""
        for thread in list(self._builds):
            thread.join(timeout)

    # -- the interface ----------------------------------------------------------------------

    def _model_for(self, model: str, dimension: int) -> _Model | None:
        state = self._models.get(model)
        if state is not None and state.exact.live and state.exact.dimension != dimension:
            raise NotReady(f"model '{model}' produced a {dimension}-d embedding but its "
                           f"registry holds {state.exact.dimension}-d ones (was the model "
                           "changed?)")
        return state

    def _write(self, work):
        """work() inside one committed (fsynced) transaction; a refused write is a 503."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                return work()
        except sqlite3.Error as exc:
            raise _write_failure(self.name, exc) from exc

    def _person_row(self, person_id: str):
        return self._db.execute(f"SELECT {PERSON_FIELDS} FROM persons p WHERE person_id = ?",
                                (person_id,)).fetchone()

    def add_set(self, records: list[Record], existing: bool) -> None:
        person_id, model = one_person(records)
        labels = [labels_json(record) for record in records]
        vectors = [np.asarray(r.embedding, dtype=np.float32).ravel() for r in records]
        dimension = records[0].dimension

        def work():
            person = self._person_row(person_id)
            check_person(person and person[1], person_id, model, existing)
            if person is None:
                self._db.execute("INSERT INTO persons VALUES (?, ?, ?, ?, ?)",
                                 (person_id, model, records[0].name, labels[0],
                                  records[0].registered_at))
            else:
                for record in records:
                    record.name = person[2]
            return [self._db.execute(
                "INSERT INTO records (id, name, labels, model, dimension, embedding,"
                " registered_at, person_id, recognizer, crop)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (r.id, r.name, label, r.model, r.dimension, v.astype("<f4").tobytes(),
                 r.registered_at, r.person_id, r.recognizer, r.crop)).lastrowid
                for r, label, v in zip(records, labels, vectors)]

        with self._lock:
            state = self._model_for(model, dimension)
            seqs = self._write(work)
            if state is None or state.exact.dimension != dimension:
                state = self._models[model] = _Model(ExactIndex(dimension))
            state.exact.append(np.array(seqs), np.stack(vectors))
            if state.ann is not None:
                for seq, vector in zip(seqs, vectors):
                    state.ann.add(seq, vector)
            self._start_ann(model)

    def get(self, record_id: str) -> Record | None:
        with self._lock:
            row = self._db.execute(f"SELECT {FIELDS} FROM records WHERE id = ?",
                                   (record_id,)).fetchone()
        return _record(row) if row else None

    def _forget_rows(self, rows) -> None:
        """Drops (seq, model) rows from the in-memory indexes, after their delete committed,
        and checkpoints so that the write-ahead log keeps no copy of them either."""
        for seq, model in rows:
            state = self._models.get(model)
            if state is not None:
                state.exact.remove(seq, compact=not state.building)
                if state.ann is not None:
                    state.ann.remove(seq)
        if rows:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _drop_if_empty(self, person_id: str) -> None:
        self._db.execute("DELETE FROM persons WHERE person_id = ? AND NOT EXISTS"
                         " (SELECT 1 FROM records WHERE person_id = ?)", (person_id, person_id))

    def delete(self, record_id: str) -> bool:
        def work():
            row = self._db.execute("SELECT seq, model, person_id FROM records WHERE id = ?",
                                   (record_id,)).fetchone()
            if row is not None:
                self._db.execute("DELETE FROM records WHERE seq = ?", (row[0],))
                self._drop_if_empty(row[2])
            return row

        with self._lock:
            row = self._write(work)
            if row is None:
                return False
            self._forget_rows([row[:2]])
            return True

    # -- persons ----------------------------------------------------------------------------

    def get_person(self, person_id: str) -> Person | None:
        with self._lock:
            row = self._person_row(person_id)
            if row is None:
                return None
            faces = self._db.execute(f"SELECT {FIELDS} FROM records WHERE person_id = ?"
                                     " ORDER BY registered_at, id", (person_id,)).fetchall()
        return _person(row, [_record(face) for face in faces])

    def list_persons(self, filters: PersonFilters, limit: int, offset: int) -> list[Person]:
        where_sql, args = person_prefix(filters, "?")
        with self._lock:
            rows = self._db.execute(
                f"SELECT {PERSON_FIELDS} FROM persons p{where_sql} ORDER BY name, person_id"
                " LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return [_person(row) for row in rows]

    def count_persons(self, filters: PersonFilters = PersonFilters()) -> int:
        where_sql, args = person_prefix(filters, "?")
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM persons{where_sql}",
                                    args).fetchone()[0]

    def update_person(self, person_id: str, name: str | None,
                      labels: dict[str, str] | None) -> Person | None:
        def work():
            row = self._person_row(person_id)
            if row is None:
                return None
            new_name = row[2] if name is None else name
            new_labels = row[3] if labels is None else labels_json(
                Record("", new_name, labels, row[1], 0, ""))
            self._db.execute("UPDATE persons SET name = ?, labels = ? WHERE person_id = ?",
                             (new_name, new_labels, person_id))
            self._db.execute("UPDATE records SET name = ? WHERE person_id = ?",
                             (new_name, person_id))
            return self._person_row(person_id)

        with self._lock:
            row = self._write(work)
        return _person(row) if row else None

    def delete_person(self, person_id: str) -> bool:
        def work():
            if self._person_row(person_id) is None:
                return None
            rows = self._db.execute("SELECT seq, model FROM records WHERE person_id = ?",
                                    (person_id,)).fetchall()
            self._db.execute("DELETE FROM records WHERE person_id = ?", (person_id,))
            self._db.execute("DELETE FROM persons WHERE person_id = ?", (person_id,))
            return rows

        with self._lock:
            rows = self._write(work)
            if rows is None:
                return False
            self._forget_rows(rows)
            return True

    def merge_persons(self, into: str, others: list[str]) -> Person:
        others = [other for other in dict.fromkeys(others) if other != into]

        def work():
            rows = [self._person_row(person_id) for person_id in (into, *others)]
            check_merge((into, *others), [row and row[1] for row in rows])
            labels = merged_labels(read_labels(rows[0][3]), [read_labels(r[3]) for r in rows[1:]])
            self._db.execute("UPDATE persons SET labels = ? WHERE person_id = ?",
                             (labels_json(Record("", rows[0][2], labels, rows[0][1], 0, "")), into))
            for other in others:
                self._db.execute("UPDATE records SET person_id = ?, name = ? WHERE person_id = ?",
                                 (into, rows[0][2], other))
                self._db.execute("DELETE FROM persons WHERE person_id = ?", (other,))
            return self._person_row(into)

        with self._lock:
            return _person(self._write(work))

    def move_face(self, face_id: str, person_id: str | None) -> Person:
        def work():
            face = self._db.execute("SELECT person_id, model, name, labels, registered_at"
                                    " FROM records WHERE id = ?", (face_id,)).fetchone()
            if face is None:
                raise NotFound(f"no registered face has id '{face_id}'")
            target = person_id
            if target is None:  # a split: the face becomes a person of its own
                target = str(uuid.uuid4())
                self._db.execute("INSERT INTO persons VALUES (?, ?, ?, ?, ?)",
                                 (target, face[1], face[2], face[3], face[4]))
            row = self._person_row(target)
            check_person(row and row[1], target, face[1], existing=True)
            self._db.execute("UPDATE records SET person_id = ?, name = ? WHERE id = ?",
                             (target, row[2], face_id))
            self._drop_if_empty(face[0])
            return self._person_row(target)

        with self._lock:
            return _person(self._write(work))

    def person_embeddings(self, model: str, person_ids: list[str]) -> dict[str, np.ndarray]:
        if not person_ids:
            return {}
        with self._lock:
            rows = self._db.execute(
                "SELECT person_id, embedding FROM records WHERE model = ?"
                " AND length(embedding) = 4 * dimension AND person_id IN"
                f" ({','.join('?' * len(person_ids))}) ORDER BY seq",
                [model, *person_ids]).fetchall()
        return grouped((pid, np.frombuffer(blob, "<f4")) for pid, blob in rows)

    def recognizers(self, model: str) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute(
                "SELECT recognizer, COUNT(*) FROM records WHERE model = ? GROUP BY recognizer",
                (model,)).fetchall())

    # -- templates of another recognizer (reembed) -----------------------------------------

    def stale_faces(self, model: str, recognizer: str, limit: int) -> list[Stale]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, recognizer, dimension, crop FROM records WHERE {STALE}"
                " AND crop IS NOT NULL ORDER BY seq LIMIT ?",
                (model, recognizer, limit)).fetchall()
        return [Stale(*row) for row in rows]

    def stale_counts(self, model: str, recognizer: str) -> tuple[int, list[str]]:
        with self._lock:
            rows = self._db.execute(f"SELECT id, crop IS NOT NULL FROM records WHERE {STALE}"
                                    " ORDER BY seq", (model, recognizer)).fetchall()
        return sum(kept for _, kept in rows), [face_id for face_id, kept in rows if not kept]

    def replace_embeddings(self, model: str, faces: list[tuple[Stale, np.ndarray]],
                           recognizer: str) -> int:
        def work():
            written = []
            for face, vector in faces:
                row = self._db.execute(
                    "UPDATE records SET embedding = ?, recognizer = ? WHERE id = ? AND"
                    " model = ? AND recognizer = ? AND dimension = ? RETURNING seq",
                    (vector.astype("<f4").tobytes(), recognizer, face.id, model,
                     face.recognizer, vector.size)).fetchone()
                if row is not None:
                    written.append((row[0], vector))
            return written

        with self._lock:
            written = self._write(work)
            state = self._models.get(model)
            for seq, vector in written:  # the in-memory rows follow the committed ones
                row = state.exact.row_of(seq)
                if row is not None:
                    state.exact.matrix[row] = vector
                if state.ann is not None:
                    state.ann.remove(seq)
                    state.ann.add(seq, vector)
            if written:  # the old templates leave the write-ahead log too
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(written)

    def search(self, model: str, vector, top_k: int) -> list[tuple[Record, float]]:
        query = unit_query(vector)
        with self._lock:
            state = self._model_for(model, query.size)
            if state is None or state.exact.live == 0:
                return []
            if state.ann is not None:
                keys, distances = state.exact.rerank(state.ann.candidates(query, top_k), query)
            else:
                keys, distances = state.exact.nearest(query, top_k)
            order = np.argsort(distances, kind="stable")[:top_k]
            found = dict(zip(keys[order].tolist(), distances[order].tolist()))
            if not found:
                return []
            rows = self._db.execute(
                f"SELECT seq, {FIELDS} FROM records WHERE seq IN"
                f" ({','.join('?' * len(found))})", list(found)).fetchall()
        return ranked([(_record(row[1:]), found[row[0]]) for row in rows], top_k)

    def list(self, filters: Filters, limit: int, offset: int) -> list[Record]:
        where_sql, args = where(filters, "?")
        with self._lock:
            rows = self._db.execute(
                f"SELECT {FIELDS} FROM records{where_sql} ORDER BY registered_at, id"
                " LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return [_record(row) for row in rows]

    def count(self, filters: Filters = Filters()) -> int:
        where_sql, args = where(filters, "?")
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM records{where_sql}", args).fetchone()[0]

    def counts_by_model(self) -> dict[str, int]:
        with self._lock:
            return {model: state.exact.live for model, state in self._models.items()
                    if state.exact.live}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for model, state in self._models.items():
                if state.ann is not None:
                    try:
                        state.ann.save()
                    except (OSError, RuntimeError) as exc:  # reconciled at the next open
                        log.warning("store %s: could not save the approximate index of %r: "
                                    "%s", self.name, model, exc)
            self._db.close()
            os.close(self._lock_fd)  # releases the single-writer lock
