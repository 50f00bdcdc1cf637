"""Per-centroid candidate lists, replayed round by round.

Centroid j's pick in round t is the first entry of its list (score desc, index asc) that
is not yet selected. A list scanned with the selected rows excluded is exact until every
entry is taken; then a rescan refills it. A list scanned with a floor holds the best rows
above the floor (up to its capacity): exact in the same way. A list shorter than its
capacity and scanned without a floor held every row that was not excluded, so it never
needs a refill."""
from __future__ import annotations

from typing import Optional

import numpy as np

_WINDOW = 32  # entries looked at per step when skipping selected rows


class CandidateLists:
    def __init__(self, k: int):
        self.k = k
        self.val = np.full((k, 0), -np.inf, dtype=np.float32)
        self.idx = np.full((k, 0), -1, dtype=np.int64)
        self.length = np.zeros(k, dtype=np.int64)  # valid entries
        self.capacity = np.zeros(k, dtype=np.int64)  # K asked at the last scan
        self.ptr = np.zeros(k, dtype=np.int64)  # next entry to consider
        self.floored = np.zeros(k, dtype=bool)  # scanned with a floor: rows below it left out
        self.filled_at = np.zeros(k, dtype=np.int64)  # items selected when last filled
        self.rescanned = 0  # lists refilled after the first fill

    def fill(self, rows: np.ndarray, val: np.ndarray, idx: np.ndarray,
             floored: Optional[np.ndarray] = None, selected: int = 0) -> None:
        """Replaces the lists of centroids `rows` with fresh scan results (m x K); `floored`:
        which of them were scanned with a finite floor; `selected`: items selected so far."""
        K = val.shape[1]
        if self.val.shape[1] == 0 and np.array_equal(rows, np.arange(self.k)):  # first fill
            self.val, self.idx = val.astype(np.float32, copy=False), idx.astype(np.int64, copy=False)
        else:
            if K > self.val.shape[1]:
                pad = K - self.val.shape[1]
                self.val = np.pad(self.val, ((0, 0), (0, pad)), constant_values=-np.inf)
                self.idx = np.pad(self.idx, ((0, 0), (0, pad)), constant_values=-1)
            self.val[rows] = -np.inf
            self.idx[rows] = -1
            self.val[rows, :K] = val
            self.idx[rows, :K] = idx
        self.length[rows] = (idx >= 0).sum(1)
        self.capacity[rows] = K
        self.ptr[rows] = 0
        self.floored[rows] = False if floored is None else floored
        self.filled_at[rows] = selected

    @property
    def complete(self) -> np.ndarray:
        return (self.length < self.capacity) & ~self.floored

    def advance(self, selected: np.ndarray) -> None:
        """Moves every pointer past entries already selected."""
        rows = np.arange(self.k)
        width = _WINDOW
        while rows.size:
            window = np.arange(width)
            pos = self.ptr[rows, None] + window  # (m, W)
            inside = pos < self.length[rows, None]
            cand = self.idx[rows[:, None], np.minimum(pos, self.idx.shape[1] - 1)]
            free = inside & ~selected[np.maximum(cand, 0)]
            found = free.any(1)
            step = np.where(found, free.argmax(1), inside.sum(1))
            self.ptr[rows] += step
            # Rows whose window was all taken and whose list goes on: look further.
            rows = rows[~found & (self.ptr[rows] < self.length[rows])]
            width = min(4 * width, 4096)  # crowded lists lose many entries a round

    @property
    def dry(self) -> np.ndarray:
        return self.ptr >= self.length

    def remaining(self) -> np.ndarray:
        return self.length - self.ptr

    def picks(self):
        """(indices, scores) of every centroid's current candidate (call advance first)."""
        rows = np.arange(self.k)
        return self.idx[rows, self.ptr], self.val[rows, self.ptr]
