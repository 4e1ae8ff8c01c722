"""The pgvector store: PostgreSQL holds the records and an HNSW cosine index per model.

Nothing is cached in the process: every call reads the database, so any number of
gateways on one database see each other's registrations and forgets at once. Each
model gets a partial expression index `(embedding::vector(D)) WHERE model = '...'`
(one table, any mix of dimensions). A search asks the index for several times top_k
candidates with a per-transaction `hnsw.ef_search`, then re-ranks them exactly here,
with the same float32 arithmetic as the local store. While the database is unreachable
calls answer 503 (Unavailable); the pool reconnects by itself.
"""
import hashlib
import logging
import threading
import uuid

import numpy as np
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from face_contract.errors import InvalidInput, NotFound, NotReady, Unavailable

from .base import (Filters, Person, PersonFilters, Record, Stale, VectorStore, check_merge,
                   check_person, grouped, labels_json, merged_labels, one_person, person_prefix,
                   ranked, read_labels, readable, unit_query, unknown_person, where)

log = logging.getLogger("gateway.store")

SCHEMA_VERSION = 2
MIGRATIONS = {  # version -> statements that bring the schema from version - 1 to it
    1: [
        "CREATE EXTENSION IF NOT EXISTS vector",
        "CREATE TABLE IF NOT EXISTS face_records ("
        " id text PRIMARY KEY, name text NOT NULL, labels jsonb NOT NULL,"
        " model text NOT NULL, dimension integer NOT NULL, embedding vector NOT NULL,"
        " registered_at text NOT NULL)",
        'CREATE INDEX IF NOT EXISTS face_records_order'
        ' ON face_records (registered_at COLLATE "C", id COLLATE "C")',
        "CREATE INDEX IF NOT EXISTS face_records_model ON face_records (model, name)",
        # The dimension each model's index was built for.
        "CREATE TABLE IF NOT EXISTS face_models (model text PRIMARY KEY,"
        " dimension integer NOT NULL)",
    ],
    2: [  # one step for the issues that changed the stores together
        # -- persons (issue 17): every old record becomes a person of its own
        "CREATE TABLE face_persons (person_id text PRIMARY KEY, model text NOT NULL,"
        " name text NOT NULL, labels jsonb NOT NULL, created_at text NOT NULL)",
        'CREATE INDEX face_persons_listing ON face_persons (model, name COLLATE "C", person_id)',
        # recognizer '': made before fingerprints. crop: the aligned face a template can be
        # rebuilt from, in this step so that --keep-crops (not built yet) needs no second
        # migration; NULL: not kept.
        "ALTER TABLE face_records ADD COLUMN person_id text,"
        " ADD COLUMN recognizer text NOT NULL DEFAULT '', ADD COLUMN crop bytea",
        "UPDATE face_records SET person_id = id",
        "INSERT INTO face_persons SELECT id, model, name, labels, registered_at FROM face_records",
        "ALTER TABLE face_records ALTER COLUMN person_id SET NOT NULL",
        'CREATE INDEX face_records_person ON face_records'
        ' (person_id, registered_at COLLATE "C", id COLLATE "C")',
        "CREATE INDEX face_records_recognizer ON face_records (model, recognizer)",
    ],
}
# Candidates fetched from the HNSW index per search, re-ranked exactly; ef_search (the
# graph's search breadth) well above it keeps the genuine match among them: at 100k x 128
# (bench-store's identity clusters) the genuine match came first 88% of the time with 40
# candidates at ef_search 160, 98% at 500 and 99.5% at 1000 (p50 15, 35, 60 ms).
MIN_CANDIDATES = 100
EF_SEARCH_PER_CANDIDATE = 10
MAX_EF_SEARCH = 1000
POOL_TIMEOUT_S = 3.0  # how long a call waits for a connection before its 503
ORDER = 'ORDER BY registered_at COLLATE "C", id COLLATE "C"'
FIELDS = "id, name, labels::text, model, dimension, registered_at, person_id, recognizer"
# Faces of a model that another recognizer made; "": made before fingerprints, unchecked.
STALE = "model = %s AND recognizer NOT IN ('', %s)"
PERSON_FIELDS = ("person_id, model, name, labels::text, created_at,"
                 " (SELECT count(*) FROM face_records r WHERE r.person_id = p.person_id)")


def _literal(vector: np.ndarray) -> str:
    """pgvector's text form; repr of each float32 reads back as exactly that float32."""
    return "[" + ",".join(map(repr, vector.astype(np.float32).tolist())) + "]"


def _has_nul(*texts: str | None) -> bool:
    """PostgreSQL text cannot hold NUL: such an id or filter matches nothing stored (as on
    the local store), and such a name or label cannot be stored."""
    return any(text is not None and "\0" in text for text in texts)


def _index_name(model: str) -> sql.Identifier:
    digest = hashlib.sha256(model.encode("utf-8")).hexdigest()[:24]
    return sql.Identifier(f"face_hnsw_{digest}")


def _record(row) -> Record:
    return Record(id=row[0], name=readable(row[1]), labels=read_labels(row[2]),
                  model=readable(row[3]), dimension=row[4], registered_at=readable(row[5]),
                  person_id=row[6], recognizer=row[7])


def _person(row, faces=None) -> Person:
    return Person(person_id=row[0], model=readable(row[1]), name=readable(row[2]),
                  labels=read_labels(row[3]), created_at=row[4], face_count=row[5], faces=faces)


def _locked_person(conn, person_id: str):
    """The person's row, locked until the transaction ends (adds, moves and forgets of one
    person from several gateways take turns)."""
    return conn.execute(f"SELECT {PERSON_FIELDS} FROM face_persons p WHERE person_id = %s"
                        " FOR UPDATE", (person_id,)).fetchone()


def _drop_if_empty(conn, person_id: str) -> None:
    conn.execute("DELETE FROM face_persons p WHERE person_id = %s AND NOT EXISTS"
                 " (SELECT 1 FROM face_records r WHERE r.person_id = p.person_id)", (person_id,))


def _vector(text: str) -> np.ndarray:
    """A vector from pgvector's text form."""
    return np.fromstring(text[1:-1], dtype=np.float32, sep=",")


def redacted(dsn: str) -> str:
    """The DSN without its password, for logs and messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable DSN)"
    if "password" in info:
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo(**info)


class PgVectorStore(VectorStore):
    def __init__(self, dsn: str, name: str = "pgvector", max_connections: int = 8):
        self.name = name
        self._where_from = redacted(dsn)
        self._dsn, self._max_connections = dsn, max_connections
        self._pool_lock = threading.Lock()
        self._pool = self._new_pool()
        self._migrated = False
        self._migrate_lock = threading.Lock()
        try:
            self._migrate()
        except Unavailable as exc:  # start anyway: calls answer 503 until it is reachable
            log.warning("%s", exc)

    def _new_pool(self) -> ConnectionPool:
        pool = ConnectionPool(
            self._dsn, min_size=1, max_size=self._max_connections, timeout=POOL_TIMEOUT_S,
            open=False, name=f"store-{self.name}",
            # No prepared statements: each search is planned with its model literal, which
            # is what lets PostgreSQL pick that model's partial index.
            kwargs={"autocommit": True, "prepare_threshold": None, "connect_timeout": 3},
            check=ConnectionPool.check_connection)
        pool.open(wait=False)
        return pool

    def _renew_pool(self, failed: ConnectionPool) -> None:
        """After an outage, a fresh pool: it connects at once when the database is back,
        where the failed one would wait out its growing reconnection back-off."""
        with self._pool_lock:
            if self._pool is not failed:
                return  # another call already renewed it
            self._pool = self._new_pool()
        threading.Thread(target=failed.close, kwargs={"timeout": 5}, daemon=True).start()

    def _connection(self):
        """A pooled connection with the schema in place; Unavailable if the database is not."""
        if not self._migrated:
            self._migrate()
        return self._pool.connection()

    def _unavailable(self, exc: Exception) -> Unavailable:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Unavailable(f"the registry store '{self.name}' (pgvector at "
                           f"{self._where_from}) is unreachable: {reason}")

    def _run(self, work):
        """work(connection) with database outages turned into 503s."""
        pool = self._pool
        try:
            with self._connection() as conn:
                return work(conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._renew_pool(pool)
            raise self._unavailable(exc) from exc

    def _migrate(self) -> None:
        with self._migrate_lock:
            if self._migrated:
                return
            pool = self._pool
            try:
                with pool.connection() as conn, conn.transaction():
                    # One gateway migrates at a time; the others wait and find it done.
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('face_registry_schema'))")
                    conn.execute("CREATE TABLE IF NOT EXISTS face_schema (version integer)")
                    row = conn.execute("SELECT max(version) FROM face_schema").fetchone()
                    version = row[0] or 0
                    for target in range(version + 1, SCHEMA_VERSION + 1):
                        for statement in MIGRATIONS[target]:
                            conn.execute(statement)
                        conn.execute("INSERT INTO face_schema VALUES (%s)", (target,))
            except (psycopg.OperationalError, PoolTimeout) as exc:
                self._renew_pool(pool)
                raise self._unavailable(exc) from exc
            self._migrated = True

    def _prepare_model(self, conn, model: str, dimension: int) -> None:
        """Inside the add's transaction: the model's dimension and HNSW index exist."""
        # The common case takes only a share lock on the model's row, so registrations of
        # one model from many gateways run side by side; a change of dimension waits for them.
        row = conn.execute("SELECT dimension FROM face_models WHERE model = %s FOR SHARE",
                           (model,)).fetchone()
        if row is not None and row[0] == dimension:
            return
        # The first record of a model, or a new dimension: one gateway at a time.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("face_model:" + model,))
        row = conn.execute("SELECT dimension FROM face_models WHERE model = %s FOR UPDATE",
                           (model,)).fetchone()
        if row is not None and row[0] == dimension:
            return
        if row is not None:
            held = conn.execute("SELECT 1 FROM face_records WHERE model = %s LIMIT 1",
                                (model,)).fetchone()
            if held:
                raise NotReady(f"model '{model}' produced a {dimension}-d embedding but its "
                               f"registry holds {row[0]}-d ones (was the model changed?)")
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(_index_name(model)))
        conn.execute("INSERT INTO face_models VALUES (%s, %s) ON CONFLICT (model)"
                     " DO UPDATE SET dimension = excluded.dimension", (model, dimension))
        conn.execute(sql.SQL(
            "CREATE INDEX IF NOT EXISTS {} ON face_records USING hnsw"
            " ((embedding::vector({})) vector_cosine_ops) WHERE model = {}").format(
                _index_name(model), sql.Literal(dimension), sql.Literal(model)))

    def _refuse_nul(self):
        raise InvalidInput(f"the registry store '{self.name}' (PostgreSQL) cannot store text "
                           "holding a NUL character (\\u0000) in a name or label")

    def add_set(self, records: list[Record], existing: bool) -> None:
        person_id, model = one_person(records)
        labels = [labels_json(record) for record in records]
        if any(_has_nul(r.name, r.model, r.person_id, *r.labels, *r.labels.values())
               for r in records):
            self._refuse_nul()

        def work(conn):
            with conn.transaction():
                self._prepare_model(conn, model, records[0].dimension)
                person = _locked_person(conn, person_id)
                check_person(person and person[1], person_id, model, existing)
                if person is None:
                    conn.execute("INSERT INTO face_persons VALUES (%s, %s, %s, %s::jsonb, %s)",
                                 (person_id, model, records[0].name, labels[0],
                                  records[0].registered_at))
                for record, label in zip(records, labels):
                    record.name = person[2] if person is not None else record.name
                    conn.execute(
                        "INSERT INTO face_records (id, name, labels, model, dimension, embedding,"
                        " registered_at, person_id, recognizer, crop)"
                        " VALUES (%s, %s, %s::jsonb, %s, %s, %s::vector, %s, %s, %s, %s)",
                        (record.id, record.name, label, model, record.dimension,
                         _literal(np.asarray(record.embedding, dtype=np.float32).ravel()),
                         record.registered_at, record.person_id, record.recognizer,
                         record.crop))
        self._run(work)

    def get(self, record_id: str) -> Record | None:
        if _has_nul(record_id):
            return None
        row = self._run(lambda conn: conn.execute(
            f"SELECT {FIELDS} FROM face_records WHERE id = %s", (record_id,)).fetchone())
        return _record(row) if row else None

    def delete(self, record_id: str) -> bool:
        if _has_nul(record_id):
            return False

        def work(conn):
            with conn.transaction():
                row = conn.execute("SELECT person_id FROM face_records WHERE id = %s",
                                   (record_id,)).fetchone()
                if row is None:
                    return False
                _locked_person(conn, row[0])
                deleted = conn.execute("DELETE FROM face_records WHERE id = %s",
                                       (record_id,)).rowcount
                _drop_if_empty(conn, row[0])
                return deleted > 0
        return self._run(work)

    # -- persons ----------------------------------------------------------------------------

    def get_person(self, person_id: str) -> Person | None:
        if _has_nul(person_id):
            return None

        def work(conn):
            with conn.transaction():
                row = conn.execute(f"SELECT {PERSON_FIELDS} FROM face_persons p"
                                   " WHERE person_id = %s", (person_id,)).fetchone()
                faces = conn.execute(f"SELECT {FIELDS} FROM face_records WHERE person_id = %s"
                                     f" {ORDER}", (person_id,)).fetchall()
                return row, faces
        row, faces = self._run(work)
        return _person(row, [_record(face) for face in faces]) if row else None

    def list_persons(self, filters: PersonFilters, limit: int, offset: int) -> list[Person]:
        if _has_nul(filters.model, filters.name, filters.name_prefix):
            return []
        where_sql, args = person_prefix(filters, "%s")
        rows = self._run(lambda conn: conn.execute(
            f"SELECT {PERSON_FIELDS} FROM face_persons p{where_sql}"
            ' ORDER BY name COLLATE "C", person_id LIMIT %s OFFSET %s',
            [*args, limit, offset]).fetchall())
        return [_person(row) for row in rows]

    def count_persons(self, filters: PersonFilters = PersonFilters()) -> int:
        if _has_nul(filters.model, filters.name, filters.name_prefix):
            return 0
        where_sql, args = person_prefix(filters, "%s")
        return self._run(lambda conn: conn.execute(
            f"SELECT count(*) FROM face_persons{where_sql}", args).fetchone()[0])

    def update_person(self, person_id: str, name: str | None,
                      labels: dict[str, str] | None) -> Person | None:
        if _has_nul(person_id):
            return None

        def work(conn):
            with conn.transaction():
                row = _locked_person(conn, person_id)
                if row is None:
                    return None
                new_name = row[2] if name is None else name
                new_labels = row[3] if labels is None else labels_json(
                    Record("", new_name, labels, row[1], 0, ""))
                conn.execute("UPDATE face_persons SET name = %s, labels = %s::jsonb"
                             " WHERE person_id = %s", (new_name, new_labels, person_id))
                conn.execute("UPDATE face_records SET name = %s WHERE person_id = %s",
                             (new_name, person_id))
                return _locked_person(conn, person_id)
        row = self._run(work)
        return _person(row) if row else None

    def delete_person(self, person_id: str) -> bool:
        if _has_nul(person_id):
            return False

        def work(conn):
            with conn.transaction():
                if _locked_person(conn, person_id) is None:
                    return False
                conn.execute("DELETE FROM face_records WHERE person_id = %s", (person_id,))
                conn.execute("DELETE FROM face_persons WHERE person_id = %s", (person_id,))
                return True
        return self._run(work)

    def merge_persons(self, into: str, others: list[str]) -> Person:
        others = [other for other in dict.fromkeys(others) if other != into]
        for person_id in (into, *others):
            if _has_nul(person_id):
                raise unknown_person(person_id)

        def work(conn):
            with conn.transaction():
                ids = (into, *others)
                # Locked in one order, so that two merges of the same people cannot deadlock.
                locked = {pid: _locked_person(conn, pid) for pid in sorted(ids)}
                rows = [locked[pid] for pid in ids]
                check_merge(ids, [row and row[1] for row in rows])
                labels = merged_labels(read_labels(rows[0][3]),
                                       [read_labels(r[3]) for r in rows[1:]])
                conn.execute("UPDATE face_persons SET labels = %s::jsonb WHERE person_id = %s",
                             (labels_json(Record("", rows[0][2], labels, rows[0][1], 0, "")),
                              into))
                conn.execute("UPDATE face_records SET person_id = %s, name = %s"
                             " WHERE person_id = ANY(%s)", (into, rows[0][2], list(others)))
                conn.execute("DELETE FROM face_persons WHERE person_id = ANY(%s)",
                             (list(others),))
                return _locked_person(conn, into)
        return _person(self._run(work))

    def move_face(self, face_id: str, person_id: str | None) -> Person:
        if _has_nul(face_id):
            raise NotFound(f"no registered face has id '{face_id}'")
        if _has_nul(person_id):
            raise unknown_person(person_id)

        def work(conn):
            with conn.transaction():
                face = conn.execute("SELECT person_id, model, name, labels::text, registered_at"
                                    " FROM face_records WHERE id = %s FOR UPDATE",
                                    (face_id,)).fetchone()
                if face is None:
                    raise NotFound(f"no registered face has id '{face_id}'")
                target = person_id
                if target is None:  # a split: the face becomes a person of its own
                    target = str(uuid.uuid4())
                    conn.execute("INSERT INTO face_persons VALUES (%s, %s, %s, %s::jsonb, %s)",
                                 (target, face[1], face[2], face[3], face[4]))
                locked = {pid: _locked_person(conn, pid) for pid in sorted({face[0], target})}
                row = locked[target]
                check_person(row and row[1], target, face[1], existing=True)
                conn.execute("UPDATE face_records SET person_id = %s, name = %s WHERE id = %s",
                             (target, row[2], face_id))
                _drop_if_empty(conn, face[0])
                return _locked_person(conn, target)
        return _person(self._run(work))

    def person_embeddings(self, model: str, person_ids: list[str]) -> dict[str, np.ndarray]:
        rows = self._run(lambda conn: conn.execute(
            "SELECT person_id, embedding::text FROM face_records WHERE model = %s"
            " AND person_id = ANY(%s) ORDER BY registered_at, id",
            (model, list(person_ids))).fetchall()) if person_ids else []
        return grouped((pid, _vector(text)) for pid, text in rows)

    def recognizers(self, model: str) -> dict[str, int]:
        if _has_nul(model):
            return {}
        return dict(self._run(lambda conn: conn.execute(
            "SELECT recognizer, count(*) FROM face_records WHERE model = %s GROUP BY recognizer",
            (model,)).fetchall()))

    # -- templates of another recognizer (reembed) -----------------------------------------

    def stale_faces(self, model: str, recognizer: str, limit: int) -> list[Stale]:
        if _has_nul(model, recognizer):
            return []
        rows = self._run(lambda conn: conn.execute(
            f"SELECT id, recognizer, dimension, crop FROM face_records WHERE {STALE}"
            f" AND crop IS NOT NULL {ORDER} LIMIT %s", (model, recognizer, limit)).fetchall())
        return [Stale(face_id, old, dimension, bytes(crop))
                for face_id, old, dimension, crop in rows]

    def stale_counts(self, model: str, recognizer: str) -> tuple[int, list[str]]:
        if _has_nul(model, recognizer):
            return 0, []
        rows = self._run(lambda conn: conn.execute(
            f"SELECT id, crop IS NOT NULL FROM face_records WHERE {STALE} {ORDER}",
            (model, recognizer)).fetchall())
        return sum(kept for _, kept in rows), [face_id for face_id, kept in rows if not kept]

    def replace_embeddings(self, model: str, faces: list[tuple[Stale, np.ndarray]],
                           recognizer: str) -> int:
        def work(conn):
            with conn.transaction():
                return sum(conn.execute(
                    "UPDATE face_records SET embedding = %s::vector, recognizer = %s"
                    " WHERE id = %s AND model = %s AND recognizer = %s AND dimension = %s",
                    (_literal(vector), recognizer, face.id, model, face.recognizer,
                     vector.size)).rowcount for face, vector in faces)
        return self._run(work) if faces else 0

    def search(self, model: str, vector, top_k: int) -> list[tuple[Record, float]]:
        query = unit_query(vector)
        if _has_nul(model):
            return []
        candidates = max(MIN_CANDIDATES, 2 * top_k)
        ef_search = min(MAX_EF_SEARCH, EF_SEARCH_PER_CANDIDATE * candidates)

        def work(conn):
            with conn.transaction():
                row = conn.execute("SELECT dimension FROM face_models WHERE model = %s",
                                   (model,)).fetchone()
                if row is None:
                    return []
                if row[0] != query.size:
                    held = conn.execute("SELECT 1 FROM face_records WHERE model = %s LIMIT 1",
                                        (model,)).fetchone()
                    if not held:
                        return []
                    raise NotReady(f"model '{model}' produced a {query.size}-d embedding but"
                                   f" its registry holds {row[0]}-d ones (was the model "
                                   "changed?)")
                conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(
                    sql.Literal(ef_search)))
                return conn.execute(sql.SQL(
                    f"SELECT {FIELDS}, embedding::text FROM face_records WHERE model = {{}}"
                    " ORDER BY embedding::vector({}) <=> %s::vector({}) LIMIT %s").format(
                        sql.Literal(model), sql.Literal(row[0]), sql.Literal(row[0])),
                    (_literal(query), candidates)).fetchall()
        rows = self._run(work)
        if not rows:
            return []
        vectors = np.stack([_vector(r[8])
                            for r in rows])
        distances = (1.0 - vectors @ query).tolist()  # exact, as the local store computes it
        return ranked([(_record(r), d) for r, d in zip(rows, distances)], top_k)

    def list(self, filters: Filters, limit: int, offset: int) -> list[Record]:
        if _has_nul(filters.model, filters.name):
            return []
        where_sql, args = where(filters, "%s")
        rows = self._run(lambda conn: conn.execute(
            f"SELECT {FIELDS} FROM face_records{where_sql} {ORDER} LIMIT %s OFFSET %s",
            [*args, limit, offset]).fetchall())
        return [_record(row) for row in rows]

    def count(self, filters: Filters = Filters()) -> int:
        if _has_nul(filters.model, filters.name):
            return 0
        where_sql, args = where(filters, "%s")
        return self._run(lambda conn: conn.execute(
            f"SELECT count(*) FROM face_records{where_sql}", args).fetchone()[0])

    def counts_by_model(self) -> dict[str, int]:
        return dict(self._run(lambda conn: conn.execute(
            "SELECT model, count(*) FROM face_records GROUP BY model").fetchall()))

    def close(self) -> None:
        with self._pool_lock:
            self._pool.close()
