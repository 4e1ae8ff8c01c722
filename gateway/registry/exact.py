"""One model's embeddings as a float32 matrix for exact cosine search.

Rows stay in key order (keys are the database's ever-increasing sequence numbers), so a
key finds its row by binary search and no per-record Python object is kept. A forget
fills its row with NaN (never a match) and the matrix is compacted once a quarter of it
is dead.
"""
import numpy as np


# Up to this top_k, the nearest rows are found by repeated argmax instead of a partition.
FEW = 16


class ExactIndex:
    def __init__(self, dimension: int, capacity: int = 1024):
        self.dimension = dimension
        self.matrix = np.empty((max(capacity, 16), dimension), dtype=np.float32)
        self.keys = np.empty(len(self.matrix), dtype=np.int64)
        self.size = 0  # rows in use, dead ones included
        self.dead = 0

    @property
    def live(self) -> int:
        return self.size - self.dead

    def _reserve(self, extra: int) -> None:
        if self.size + extra <= len(self.matrix):
            return
        # Grow by a quarter, not double: memory stays near the vectors' own size.
        capacity = max(self.size + extra, len(self.matrix) * 5 // 4)
        matrix = np.empty((capacity, self.dimension), dtype=np.float32)
        matrix[:self.size] = self.matrix[:self.size]
        keys = np.empty(capacity, dtype=np.int64)
        keys[:self.size] = self.keys[:self.size]
        self.matrix, self.keys = matrix, keys

    def append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Rows for keys larger than every key already held."""
        self._reserve(len(keys))
        self.matrix[self.size:self.size + len(keys)] = vectors
        self.keys[self.size:self.size + len(keys)] = keys
        self.size += len(keys)

    def row_of(self, key: int) -> int | None:
        row = int(np.searchsorted(self.keys[:self.size], key))
        if row < self.size and self.keys[row] == key and not np.isnan(self.matrix[row, 0]):
            return row
        return None

    def remove(self, key: int, compact: bool = True) -> None:
        """compact=False while something reads rows by position (an index build)."""
        row = self.row_of(key)
        if row is None:
            return
        self.matrix[row] = np.nan
        self.dead += 1
        if compact and self.dead * 4 > self.size:
            self._compact()

    def _compact(self) -> None:
        alive = ~np.isnan(self.matrix[:self.size, 0])
        n = int(alive.sum())
        self.matrix[:n] = self.matrix[:self.size][alive]
        self.keys[:n] = self.keys[:self.size][alive]
        self.size, self.dead = n, 0

    def live_keys(self) -> np.ndarray:
        return self.keys[:self.size][~np.isnan(self.matrix[:self.size, 0])]

    def nearest(self, query: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, cosine distances) of the top_k nearest live rows, in no particular order."""
        k = min(top_k, self.live)
        if k == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        sims = self.matrix[:self.size] @ query  # one pass over the matrix, no copy of it
        if self.dead:  # dead rows are NaN: make them lose every comparison
            np.nan_to_num(sims, copy=False, nan=-np.inf)
        if k <= FEW:  # a few vectorised argmax passes cost far less than a partition
            best = np.empty(k, np.int64)
            values = np.empty(k, np.float32)
            for i in range(k):
                best[i] = np.argmax(sims)
                values[i] = sims[best[i]]
                sims[best[i]] = -np.inf
        else:
            best = np.argpartition(sims, self.size - k)[self.size - k:]
            values = sims[best]
        return self.keys[best], 1.0 - values

    def rerank(self, keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact distances of candidate keys (from an approximate index); unknown keys dropped."""
        held = self.keys[:self.size]
        rows = np.minimum(np.searchsorted(held, keys), max(self.size - 1, 0))
        found = held[rows] == keys if self.size else np.zeros(len(keys), bool)
        keys, rows = keys[found], rows[found]
        distances = 1.0 - self.matrix[rows] @ query
        alive = ~np.isnan(distances)
        return keys[alive], distances[alive]
