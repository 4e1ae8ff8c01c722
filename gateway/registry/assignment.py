"""Every face of one photo named at once: a person is given to at most one face.

Face by face, two faces of a group photo can both take the same nearest person. Here the
faces and their candidate people (each face's top_k nearest persons) form one cost matrix,
and an optimal assignment (scipy's linear_sum_assignment) minimises the total distance over
the whole photo. Each face may also stay unknown at the cost of the threshold, so a pair
beyond the threshold is never chosen, and a face whose best free person is beyond it is
unknown (bench/groups.py measures this against face-by-face nearest matching).
"""
import dataclasses

import numpy as np
from scipy.optimize import linear_sum_assignment

from .base import VectorStore
from .persons import PersonMatch, nearest_persons

# A pair that may not be chosen: a face's candidate it did not find, another face's
# "unknown" slot. Finite, as linear_sum_assignment needs a feasible matrix.
FORBIDDEN = 1e6


@dataclasses.dataclass
class FaceAnswer:
    candidates: list[PersonMatch]  # the face's nearest people, ascending
    person: PersonMatch | None  # the person given to it; None: unknown
    distance: float | None  # to that person; unknown: to its nearest person not given away


def assign(distances: np.ndarray, threshold: float) -> list[int | None]:
    """Column given to each row of a (faces x people) distance matrix, or None (unknown).

    Each row also has its own "unknown" column costing `threshold`, so the assignment
    minimises the photo's total distance with no person used twice and no pair beyond
    the threshold (np.inf: not a candidate)."""
    faces, people = distances.shape
    unknown = np.full((faces, faces), FORBIDDEN)
    np.fill_diagonal(unknown, threshold)
    cost = np.hstack([np.where(np.isfinite(distances), distances, FORBIDDEN), unknown])
    rows, cols = linear_sum_assignment(cost)
    given: list[int | None] = [None] * faces
    for row, col in zip(rows, cols):
        if col < people and distances[row, col] <= threshold:
            given[row] = int(col)
    return given


def nearest_each(distances: np.ndarray, threshold: float) -> list[int | None]:
    """Face by face: each row's nearest column within the threshold (people may repeat);
    the baseline assign() is measured against."""
    nearest = distances.argmin(axis=1) if distances.shape[1] else np.zeros(len(distances), int)
    return [int(col) if distances.shape[1] and distances[row, col] <= threshold else None
            for row, col in enumerate(nearest)]


def candidate_matrix(candidates: list[list[PersonMatch]]) -> tuple[np.ndarray, list[str]]:
    """(faces x people) distances over every face's candidates (np.inf: not a candidate of
    that face), and the person ids of the columns."""
    people = sorted({m.person_id for found in candidates for m in found})
    column = {person_id: i for i, person_id in enumerate(people)}
    distances = np.full((len(candidates), len(people)), np.inf)
    for row, found in enumerate(candidates):
        for m in found:
            distances[row, column[m.person_id]] = m.distance
    return distances, people


def identify_faces(store: VectorStore, model: str, vectors, top_k: int,
                   threshold: float) -> list[FaceAnswer]:
    """Every face of one photo (its embeddings) named by person, each person at most once."""
    candidates = [nearest_persons(store, model, vector, top_k) for vector in vectors]
    distances, people = candidate_matrix(candidates)
    given = assign(distances, threshold)
    taken = {people[col] for col in given if col is not None}
    answers = []
    for found, col in zip(candidates, given):
        if col is not None:
            person = next(m for m in found if m.person_id == people[col])
            answers.append(FaceAnswer(found, person, person.distance))
        else:
            free = [m for m in found if m.person_id not in taken]
            answers.append(FaceAnswer(found, None, free[0].distance if free else None))
    return answers
