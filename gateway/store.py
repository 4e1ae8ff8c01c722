"""The face registry behind register / identify / forget.

`VectorStore` is the interface; `LocalStore` keeps records durable in SQLite
(WAL, synchronous=FULL: a registration is committed before its 200) and mirrors
the embeddings into one in-memory float32 matrix per model for exact cosine search.
"""
import abc
import dataclasses
import datetime
import json
import pathlib
import sqlite3
import threading
import uuid

import numpy as np

from face_contract.errors import FaceError, InvalidInput, NotReady


@dataclasses.dataclass
class Record:
    id: str
    name: str
    labels: dict[str, str]
    model: str
    dimension: int
    registered_at: str  # RFC 3339 UTC, millisecond precision
    embedding: np.ndarray | None = None  # float32, L2-normalised; None in listings

    @classmethod
    def new(cls, name: str, labels: dict[str, str], model: str, embedding) -> "Record":
        vec = np.asarray(embedding, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(vec))
        if vec.size == 0 or not np.isfinite(norm) or norm == 0.0:
            raise FaceError("the backend returned an empty or zero embedding")  # a 500
        return cls(id=str(uuid.uuid4()), name=name, labels=dict(labels), model=model,
                   dimension=int(vec.size), registered_at=utc_now(), embedding=vec / norm)


def utc_now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclasses.dataclass(frozen=True)
class Filters:
    model: str | None = None
    name: str | None = None


class VectorStore(abc.ABC):
    @abc.abstractmethod
    def add(self, record: Record) -> None: ...

    @abc.abstractmethod
    def get(self, record_id: str) -> Record | None: ...

    @abc.abstractmethod
    def delete(self, record_id: str) -> bool:
        """True when the record existed."""

    @abc.abstractmethod
    def search(self, model: str, vector, top_k: int) -> list[tuple[Record, float]]:
        """The top_k records of `model` nearest `vector`: (record, cosine distance), ascending."""

    @abc.abstractmethod
    def list(self, filters: Filters, limit: int, offset: int) -> list[Record]:
        """Records ordered by registered_at then id, without embeddings."""

    @abc.abstractmethod
    def count(self, filters: Filters = Filters()) -> int: ...

    @abc.abstractmethod
    def counts_by_model(self) -> dict[str, int]:
        """Number of records per model (for the registry-size metric)."""

    def close(self) -> None:
        pass


class _ModelIndex:
    """Row-per-record float32 matrix of one model; deletes move the last row into the hole."""

    def __init__(self, dimension: int):
        self.dimension = dimension
        self.matrix = np.empty((16, dimension), dtype=np.float32)
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}

    def add(self, record_id: str, vector: np.ndarray) -> None:
        n = len(self.ids)
        if n == len(self.matrix):  # grow geometrically so adds stay amortised O(d)
            self.matrix = np.concatenate([self.matrix, np.empty_like(self.matrix)])
        self.matrix[n] = vector
        self.ids.append(record_id)
        self.rows[record_id] = n

    def remove(self, record_id: str) -> None:
        row = self.rows.pop(record_id)
        last_id = self.ids.pop()
        if last_id != record_id:
            self.matrix[row] = self.matrix[len(self.ids)]
            self.ids[row] = last_id
            self.rows[last_id] = row

    def nearest(self, vector: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        n = len(self.ids)
        if n == 0:
            return []
        distances = 1.0 - self.matrix[:n] @ vector
        k = min(top_k, n)
        best = np.argpartition(distances, k - 1)[:k] if k < n else np.arange(n)
        best = sorted(best, key=lambda i: (distances[i], self.ids[i]))
        return [(self.ids[i], float(distances[i])) for i in best]


class LocalStore(VectorStore):
    """SQLite file `<data_dir>/<name>.sqlite3`, loaded into memory at open."""

    def __init__(self, path: pathlib.Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records ("
            " id TEXT PRIMARY KEY, name TEXT NOT NULL, labels TEXT NOT NULL,"
            " model TEXT NOT NULL, dimension INTEGER NOT NULL, embedding BLOB NOT NULL,"
            " registered_at TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS records_order ON records (registered_at, id)")
        self._meta: dict[str, Record] = {}
        self._indexes: dict[str, _ModelIndex] = {}
        for row in self._db.execute("SELECT id, name, labels, model, dimension, embedding,"
                                    " registered_at FROM records"):
            record = Record(id=row[0], name=row[1], labels=json.loads(row[2]), model=row[3],
                            dimension=row[4], registered_at=row[6])
            self._remember(record, np.frombuffer(row[5], dtype="<f4"))

    def _remember(self, record: Record, vector: np.ndarray) -> None:
        index = self._indexes.get(record.model)
        if index is None or (not index.ids and index.dimension != record.dimension):
            index = self._indexes[record.model] = _ModelIndex(record.dimension)
        index.add(record.id, vector)
        self._meta[record.id] = dataclasses.replace(record, embedding=None)

    def _index_for(self, model: str, dimension: int) -> _ModelIndex | None:
        index = self._indexes.get(model)
        if index is not None and index.ids and index.dimension != dimension:
            raise NotReady(f"model '{model}' produced a {dimension}-d embedding but its "
                           f"registry holds {index.dimension}-d ones (was the model changed?)")
        return index

    def add(self, record: Record) -> None:
        vector = np.asarray(record.embedding, dtype=np.float32)
        with self._lock:
            self._index_for(record.model, record.dimension)
            with self._db:  # one committed (fsynced) transaction before returning
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (record.id, record.name, json.dumps(record.labels, sort_keys=True),
                     record.model, record.dimension, vector.astype("<f4").tobytes(),
                     record.registered_at))
            self._remember(record, vector)

    def get(self, record_id: str) -> Record | None:
        with self._lock:
            return self._meta.get(record_id)

    def delete(self, record_id: str) -> bool:
        with self._lock:
            record = self._meta.get(record_id)
            if record is None:
                return False
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM records WHERE id = ?", (record_id,))
            del self._meta[record_id]
            self._indexes[record.model].remove(record_id)
            return True

    def search(self, model: str, vector, top_k: int) -> list[tuple[Record, float]]:
        vec = np.asarray(vector, dtype=np.float32).ravel()
        vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        with self._lock:
            index = self._index_for(model, vec.size)
            if index is None:
                return []
            return [(self._meta[i], d) for i, d in index.nearest(vec, top_k)]

    @staticmethod
    def _where(filters: Filters) -> tuple[str, list]:
        clauses, args = [], []
        if filters.model is not None:
            clauses.append("model = ?")
            args.append(filters.model)
        if filters.name is not None:
            clauses.append("name = ?")
            args.append(filters.name)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def list(self, filters: Filters, limit: int, offset: int) -> list[Record]:
        where, args = self._where(filters)
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM records{where} ORDER BY registered_at, id LIMIT ? OFFSET ?",
                [*args, limit, offset]).fetchall()
            return [self._meta[r[0]] for r in rows]

    def count(self, filters: Filters = Filters()) -> int:
        where, args = self._where(filters)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM records{where}", args).fetchone()[0]

    def counts_by_model(self) -> dict[str, int]:
        with self._lock:
            return {model: len(index.ids) for model, index in self._indexes.items()}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_stores(data_dir: pathlib.Path, names) -> dict[str, VectorStore]:
    return {name: LocalStore(pathlib.Path(data_dir) / f"{name}.sqlite3") for name in names}


def require(stores: dict[str, VectorStore], name: str | None) -> VectorStore:
    """The named store (default `local-store`, else the first configured); unknown: 400."""
    if name is None:
        name = "local-store" if "local-store" in stores else next(iter(stores))
    if name not in stores:
        raise InvalidInput(f"unknown store '{name}' (configured: {', '.join(stores)})")
    return stores[name]
