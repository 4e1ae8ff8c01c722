"""An approximate nearest-neighbour index (usearch HNSW) in front of the exact matrix.

It only proposes candidates: the local store re-ranks them exactly against its matrix,
so returned distances are the exact ones. Vectors are held as int8 (a quarter of the
float32 matrix) since they are only used to find candidates. The index is saved beside
the database and reconciled with it when loaded, so a crash between saves costs only
the adds and removes since the last save, never a wrong answer.
"""
import logging
import os
import pathlib

import numpy as np
from usearch.index import Index

from .exact import ExactIndex

log = logging.getLogger("gateway.store")

CONNECTIVITY = 16
EXPANSION_ADD = 128
# The graph's search breadth: at 128 about 5% of genuine matches in a 30k clustered gallery
# were missed, at 512 0.5% (measured with bench/store_bench.py's cluster model).
EXPANSION_SEARCH = 512
BATCH = 20000


def _new_index(dimension: int) -> Index:
    return Index(ndim=dimension, metric="cos", dtype="i8", connectivity=CONNECTIVITY,
                 expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)


class AnnIndex:
    def __init__(self, path: pathlib.Path, index: Index):
        self.path, self.index = path, index

    @classmethod
    def load(cls, path: pathlib.Path, dimension: int) -> "AnnIndex":
        """The saved index, or an empty one when there is none (or it does not fit)."""
        if path.exists():
            try:
                index = _new_index(dimension)
                index.load(str(path))
                index.expansion_search = EXPANSION_SEARCH  # a setting, not part of the file
                if index.ndim == dimension:
                    return cls(path, index)
            except (RuntimeError, ValueError) as exc:
                log.warning("approximate index %s unreadable (%s): rebuilding it", path, exc)
        return cls(path, _new_index(dimension))

    def fill(self, exact: ExactIndex, size: int) -> None:
        """Add the live rows among exact's first `size` rows that the index lacks (batches;
        may run outside the store's lock: those rows are never moved while a build runs)."""
        matrix, keys = exact.matrix, exact.keys
        for start in range(0, size, BATCH):
            batch_keys = keys[start:min(start + BATCH, size)]
            vectors = matrix[start:start + len(batch_keys)]
            todo = ~np.isnan(vectors[:, 0]) & ~self.index.contains(batch_keys.astype(np.uint64))
            if todo.any():
                self.index.add(batch_keys[todo].astype(np.uint64), vectors[todo], threads=0)

    def reconcile(self, exact: ExactIndex) -> None:
        """Make the index hold exactly exact's live keys (under the store's lock)."""
        live = exact.live_keys().astype(np.uint64)
        stale = np.setdiff1d(np.asarray(self.index.keys, dtype=np.uint64), live)
        for key in stale:
            self.index.remove(int(key))
        missing = np.setdiff1d(live, np.asarray(self.index.keys, dtype=np.uint64))
        if len(missing):
            self.index.add(missing, exact.matrix[
                np.searchsorted(exact.keys[:exact.size], missing.astype(np.int64))], threads=1)

    def add(self, key: int, vector: np.ndarray) -> None:
        self.index.add(key, vector, threads=1)

    def remove(self, key: int) -> None:
        self.index.remove(key)

    def candidates(self, query: np.ndarray, top_k: int) -> np.ndarray:
        """Several times top_k keys, re-ranked exactly by the store."""
        count = max(4 * top_k, 32)
        return np.asarray(self.index.search(query, count, threads=1).keys, dtype=np.int64)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        self.index.save(str(tmp))
        os.replace(tmp, self.path)
