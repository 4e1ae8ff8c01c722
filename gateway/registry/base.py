"""What every registry store shares: the record, listing filters and the interface."""
import abc
import dataclasses
import datetime
import json
import re
import uuid

import numpy as np

from face_contract.errors import FaceError, InvalidInput, NotFound


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
    person_id: str = ""  # the person this face belongs to (a UUID)
    recognizer: str = ""  # fingerprint of the recognizer that made the embedding; "": before
    crop: bytes | None = None  # the aligned face (PNG) with --keep-crops; None: not kept

    @classmethod
    def new(cls, name: str, labels: dict[str, str], model: str, embedding,
            person_id: str | None = None, recognizer: str = "",
            crop: bytes | None = None) -> "Record":
        vec = np.asarray(embedding, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(vec))
        if vec.size == 0 or not np.isfinite(norm) or norm == 0.0:
            raise FaceError("the backend returned an empty or zero embedding")  # a 500
        return cls(id=str(uuid.uuid4()), name=name, labels=dict(labels), model=model,
                   dimension=int(vec.size), registered_at=utc_now(), embedding=vec / norm,
                   person_id=person_id or str(uuid.uuid4()), recognizer=recognizer,
                   crop=crop)


@dataclasses.dataclass
class Person:
    """One person of one model in one store: a name (not unique), labels and their faces."""
    person_id: str
    model: str
    name: str
    labels: dict[str, str]
    created_at: str
    face_count: int
    faces: list[Record] | None = None  # get_person only, oldest first, without embeddings


@dataclasses.dataclass(frozen=True)
class Stale:
    """A face whose template another recognizer made, with the crop to rebuild it from."""
    id: str
    recognizer: str
    dimension: int
    crop: bytes


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


def one_person(records: list[Record]) -> tuple[str, str]:
    """(person_id, model) of a set of faces added together; ValueError unless they share both."""
    if not records or len({(r.person_id, r.model, r.dimension) for r in records}) != 1:
        raise ValueError("a set of faces is added to one person of one model, one dimension")
    return records[0].person_id, records[0].model


def unknown_person(person_id: str) -> NotFound:
    return NotFound(f"no person has person_id '{person_id}'")


def check_person(row_model: str | None, person_id: str, model: str, existing: bool) -> None:
    """Faces of `model` may join the person whose row holds `row_model` (None: no such
    person, which only a new person may be)."""
    if existing and row_model is None:
        raise unknown_person(person_id)
    if row_model is not None and row_model != model:
        raise InvalidInput(f"person '{person_id}' belongs to model '{row_model}', not '{model}'")


def check_merge(ids: tuple[str, ...], models: list[str | None]) -> None:
    """Every person of a merge exists and is of the first one's model."""
    for person_id, model in zip(ids, models):
        if model is None:
            raise unknown_person(person_id)
        if model != models[0]:
            raise InvalidInput(f"person '{person_id}' belongs to model '{model}' and "
                               f"'{ids[0]}' to '{models[0]}': only people of one model merge")


def person_prefix(filters: "PersonFilters", placeholder: str, alias: str = "") -> tuple[str, list]:
    """WHERE clause and arguments of a people listing: model, name, and a case-sensitive name
    prefix (the same characters compared by SQLite and PostgreSQL)."""
    clauses, args = [], []
    for column, value in (("model", filters.model), ("name", filters.name)):
        if value is not None:
            clauses.append(f"{alias}{column} = {placeholder}")
            args.append(value)
    if filters.name_prefix:
        clauses.append(f"substr({alias}name, 1, length({placeholder})) = {placeholder}")
        args += [filters.name_prefix, filters.name_prefix]
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def grouped(rows) -> dict[str, np.ndarray]:
    """(person_id, vector) rows as one matrix per person."""
    out: dict[str, list] = {}
    for person_id, vector in rows:
        out.setdefault(person_id, []).append(vector)
    return {person_id: np.stack(vectors) for person_id, vectors in out.items()}


@dataclasses.dataclass(frozen=True)
class PersonFilters:
    model: str | None = None
    name: str | None = None
    name_prefix: str | None = None


def merged_labels(into: dict[str, str], others: list[dict[str, str]]) -> dict[str, str]:
    """A merge keeps the labels of the person merged into; the others add only keys it lacks."""
    labels = {}
    for other in reversed(others):
        labels.update(other)
    return {**labels, **into}


class VectorStore(abc.ABC):
    def add(self, record: Record) -> None:
        """One face; its person is created unless it exists."""
        self.add_set([record], existing=False)

    @abc.abstractmethod
    def add_set(self, records: list[Record], existing: bool) -> None:
        """Faces of one person in one transaction: all are stored or none. existing: the person
        must exist (NotFound otherwise, InvalidInput if of another model) and the faces take
        its name; else the person is created with the first face's name and labels."""

    @abc.abstractmethod
    def get_person(self, person_id: str) -> Person | None: ...

    @abc.abstractmethod
    def list_persons(self, filters: PersonFilters, limit: int, offset: int) -> list[Person]:
        """People ordered by name then person_id, with their face counts (no faces)."""

    @abc.abstractmethod
    def count_persons(self, filters: PersonFilters = PersonFilters()) -> int: ...

    @abc.abstractmethod
    def update_person(self, person_id: str, name: str | None,
                      labels: dict[str, str] | None) -> Person | None:
        """Rename and/or relabel (the faces take the new name); None when unknown."""

    @abc.abstractmethod
    def delete_person(self, person_id: str) -> bool:
        """Every face of the person and the person; True when it existed."""

    @abc.abstractmethod
    def merge_persons(self, into: str, others: list[str]) -> Person:
        """Moves every face of `others` to `into` and deletes them; NotFound naming an unknown
        id, InvalidInput when they are of different models."""

    @abc.abstractmethod
    def move_face(self, face_id: str, person_id: str | None) -> Person:
        """Moves one face to another person of its model, or (None) to a new person of its
        name and labels: a split. The face's old person goes with its last face."""

    @abc.abstractmethod
    def person_embeddings(self, model: str, person_ids: list[str]) -> dict[str, np.ndarray]:
        """Each person's face embeddings (float32 rows) of `model`; unknown ids left out."""

    @abc.abstractmethod
    def recognizers(self, model: str) -> dict[str, int]:
        """Faces of `model` per recognizer fingerprint."""

    @abc.abstractmethod
    def stale_faces(self, model: str, recognizer: str, limit: int) -> list[Stale]:
        """Up to `limit` faces of `model` that another recognizer made (fingerprint neither
        `recognizer` nor ""), and that kept their crop, in storage order."""

    @abc.abstractmethod
    def stale_counts(self, model: str, recognizer: str) -> tuple[int, list[str]]:
        """Of `model`'s faces that another recognizer made: how many kept their crop, and the
        ids of those that did not (they need registering again)."""

    @abc.abstractmethod
    def replace_embeddings(self, model: str, faces: list[tuple[Stale, np.ndarray]],
                           recognizer: str) -> int:
        """Each stale face's new embedding (unit float32 of the face's dimension) and
        `recognizer`'s fingerprint, written together in one transaction; a face forgotten or
        re-embedded since it was read is left alone. Answers how many were written."""

    @abc.abstractmethod
    def get(self, record_id: str) -> Record | None: ...

    @abc.abstractmethod
    def delete(self, record_id: str) -> bool:
        """True when the record existed; its person goes with its last face."""

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
