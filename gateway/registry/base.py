"""What every registry store shares: the record, listing filters and the interface."""
import abc
import dataclasses
import datetime
import json
import re
import uuid

import numpy as np

from face_contract.errors import FaceError, InvalidInput


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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


def labels_json(record: Record) -> str:
    """The record's labels as stored, after refusing any text that some store cannot hold.

    A JSON `\\ud800` escape decodes to a lone surrogate, which no UTF-8 writer can encode,
    and PostgreSQL text cannot hold NUL: such a record would be unreadable later (or
    stored in one kind of store and not another), so it is never stored.
    """
    for field, text in [("name", record.name), ("model", record.model),
                        *((f"labels key {k!r}", k) for k in record.labels),
                        *((f"labels.{k}", v) for k, v in record.labels.items())]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{readable(field)} is not valid UTF-8 text "
                               "(it holds a lone surrogate such as \\ud800)") from None
        if "\x00" in text:
            raise InvalidInput(f"{field} holds a NUL character")
    return json.dumps(record.labels, sort_keys=True, ensure_ascii=False)


def readable(text: str) -> str:
    """Text read back from a store, made safe to serialise even if an older writer stored
    lone surrogates (each becomes U+FFFD)."""
    return LONE_SURROGATE.sub("\ufffd", text)


def read_labels(stored: str) -> dict[str, str]:
    try:
        labels = json.loads(stored)
    except ValueError:
        return {}
    if not isinstance(labels, dict):
        return {}
    return {readable(str(k)): readable(str(v)) for k, v in labels.items()}


def unit_query(vector) -> np.ndarray:
    vec = np.asarray(vector, dtype=np.float32).ravel()
    return vec / max(float(np.linalg.norm(vec)), 1e-12)


def ranked(hits: list[tuple[Record, float]], top_k: int) -> list[tuple[Record, float]]:
    """Nearest first; equal distances in id order, as every store answers."""
    return sorted(hits, key=lambda hit: (hit[1], hit[0].id))[:top_k]


@dataclasses.dataclass(frozen=True)
class Filters:
    model: str | None = None
    name: str | None = None


def where(filters: Filters, placeholder: str) -> tuple[str, list]:
    """The SQL WHERE clause (or "") and its arguments for a listing's filters."""
    clauses, args = [], []
    for column, value in (("model", filters.model), ("name", filters.name)):
        if value is not None:
            clauses.append(f"{column} = {placeholder}")
            args.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


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
