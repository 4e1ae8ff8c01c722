"""Identify by person: one row per registered person (or per name), nearest first.

A person's distance from a probe is made from their faces by a rule. Measured by
bench/persons.py (bench/results/persons.md: 115 people of ../shared/faces, 409 mated and
2007 non-mated probes), the distance to the person's template (the re-normalised mean of
their embeddings) matched or beat the nearest face at 1, 3 and 5 photos per person (FNIR
at FPIR 1% with 3 photos: 0.49% against 0.73%) and the mean of the face distances fell
behind at 5; so the template is the default.
"""
import dataclasses

import numpy as np

from .base import Record, VectorStore, unit_query


def best(faces: np.ndarray, probes: np.ndarray) -> np.ndarray:
    return (1.0 - probes @ faces.T).min(axis=1)


def template(faces: np.ndarray, probes: np.ndarray) -> np.ndarray:
    mean = faces.sum(axis=0)
    return 1.0 - probes @ (mean / max(float(np.linalg.norm(mean)), 1e-12))


def mean(faces: np.ndarray, probes: np.ndarray) -> np.ndarray:
    return (1.0 - probes @ faces.T).mean(axis=1)


RULES = {"best": best, "template": template, "mean": mean}  # (faces, probes) -> distances
DEFAULT = "template"
CANDIDATES_PER_RESULT = 2  # people ranked by the rule per person answered


@dataclasses.dataclass
class PersonMatch:
    person_id: str
    nearest: Record  # the person's nearest face
    faces: int
    distance: float


def nearest_by(store: VectorStore, model: str, vector, count: int, key) -> list[tuple[Record, float]]:
    """The nearest face of each of the `count` nearest groups of faces (key(record): the
    group), ascending; widens the face search until it holds `count` groups or the gallery."""
    limit = max(store.counts_by_model().get(model, 0), 1)
    want = min(count * 4, limit)
    while True:
        first: dict[str, tuple[Record, float]] = {}
        faces = store.search(model, vector, want)
        for record, distance in faces:  # ascending: a group's first face is its nearest
            first.setdefault(key(record), (record, distance))
        if len(first) >= count or len(faces) < want or want >= limit:
            return list(first.values())[:count]
        want = min(want * 4, limit)


def nearest_persons(store: VectorStore, model: str, vector, top_k: int,
                    rule: str = DEFAULT) -> list[PersonMatch]:
    """The top_k people nearest `vector` by `rule`, ascending (ties in person_id order).

    Candidates are the people of the nearest faces, CANDIDATES_PER_RESULT per result: a
    person whose template is near has faces near too."""
    query = unit_query(vector)
    candidates = nearest_by(store, model, query, top_k * CANDIDATES_PER_RESULT,
                            lambda record: record.person_id)
    embeddings = store.person_embeddings(model, [record.person_id for record, _ in candidates])
    found = []
    for record, _ in candidates:
        faces = embeddings.get(record.person_id)
        if faces is None or not len(faces):  # forgotten between the two reads
            continue
        distance = float(np.float32(RULES[rule](faces, query[None, :])[0]))
        found.append(PersonMatch(record.person_id, record, len(faces), distance))
    return sorted(found, key=lambda m: (m.distance, m.person_id))[:top_k]
