"""Grouping faces nobody has named yet: average-linkage agglomerative clustering.

Photo libraries run DBSCAN at the verify threshold, which chains people together through
borderline pairs (on lfw_grey it makes one cluster of everyone). Average linkage joins two
groups only when their faces are near on average, and the tree is cut at CUT_DISTANCE,
chosen by bench/clustering.py on the labelled sets of ../shared/faces (the cut with the best
mean BCubed F over them; bench/results/clustering.md). CPU work: call it off the event loop.
"""
import dataclasses

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

# Cosine distance at which the average-linkage tree is cut, for the real pack's
# MobileFaceNet (bench/results/clustering.md).
CUT_DISTANCE = 0.64


@dataclasses.dataclass
class Cluster:
    members: list[int]  # indexes into the faces clustered, ascending
    representative: int  # the member nearest the cluster's mean embedding


def labels(vectors: np.ndarray, cut: float = CUT_DISTANCE) -> np.ndarray:
    """A cluster number per face (L2-normalised rows); every face alone when fewer than 2."""
    if len(vectors) < 2:
        return np.arange(len(vectors))
    tree = linkage(np.asarray(vectors, np.float64), method="average", metric="cosine")
    return fcluster(tree, t=cut, criterion="distance")


def cluster(vectors, cut: float = CUT_DISTANCE) -> tuple[list[Cluster], list[int]]:
    """Clusters of two or more faces (largest first) and the faces left alone."""
    if not len(vectors):
        return [], []
    vectors = np.asarray(vectors, np.float64)
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels(vectors, cut)):
        groups.setdefault(int(label), []).append(index)
    clusters, alone = [], []
    for members in groups.values():
        if len(members) < 2:
            alone += members
            continue
        mean = vectors[members].mean(axis=0)
        nearest = int(np.argmax(vectors[members] @ mean))
        clusters.append(Cluster(members, members[nearest]))
    clusters.sort(key=lambda c: (-len(c.members), c.members[0]))
    return clusters, sorted(alone)
