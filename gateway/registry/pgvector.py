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

import numpy as np
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from face_contract.errors import InvalidInput, NotReady, Unavailable

from .base import (Filters, Record, VectorStore, labels_json, ranked, read_labels, readable,
                   unit_query, where)

log = logging.getLogger("gateway.store")

SCHEMA_VERSION = 1
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
FIELDS = "id, name, labels::text, model, dimension, registered_at"


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
                  model=readable(row[3]), dimension=row[4], registered_at=readable(row[5]))


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

    def add(self, record: Record) -> None:
        labels = labels_json(record)
        if _has_nul(record.name, record.model, *record.labels, *record.labels.values()):
            raise InvalidInput(f"the registry store '{self.name}' (PostgreSQL) cannot store "
                               "text holding a NUL character (\\u0000) in a name or label")
        vector = np.asarray(record.embedding, dtype=np.float32).ravel()

        def work(conn):
            with conn.transaction():
                self._prepare_model(conn, record.model, record.dimension)
                conn.execute(
                    "INSERT INTO face_records VALUES (%s, %s, %s::jsonb, %s, %s, %s::vector, %s)",
                    (record.id, record.name, labels, record.model, record.dimension,
                     _literal(vector), record.registered_at))
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
        return self._run(lambda conn: conn.execute(
            "DELETE FROM face_records WHERE id = %s", (record_id,)).rowcount) > 0

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
        vectors = np.stack([np.fromstring(r[6][1:-1], dtype=np.float32, sep=",")
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
