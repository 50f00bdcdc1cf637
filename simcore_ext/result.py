"""CoresetResult: what a selection returns, saved losslessly and atomically (.npz, no pickle)."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, Optional

import numpy as np
import torch

FORMAT = "simcore.coreset/1"
STOP_REASONS = ("budget", "criterion", "exhausted")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
    """Writes `path` through a temporary file in the same folder, synced, then renamed:
    readers see the old file or the whole new one, never a part."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class CoresetResult:
    """A selected coreset of the open-set.

    indices       int64 [B]: open-set rows in selection order (round by round; within a
                  round by first picking centroid).
    round_scores  float64 [T]: g_t of every computed round, the stopping round included.
    round_sizes   int64 [T]: items added by each round (0 for a criterion stop).
    stop_reason   "budget" | "criterion" | "exhausted".
    threshold     tau * g_patience, or None if round `patience` was never reached.
    centroids     float32 [k, d]: the centroids used (unit rows under cosine).
    params        the resolved parameters (k, budget, tau, patience, metric, seed, sizes...).
    stats         how the selection ran (passes, rescans, seconds...); informational.
    """

    indices: torch.Tensor
    round_scores: torch.Tensor
    round_sizes: torch.Tensor
    stop_reason: str
    threshold: Optional[float]
    centroids: torch.Tensor
    params: Dict[str, Any] = field(default_factory=dict)
    stats: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.indices.numel())

    @property
    def rounds(self) -> int:
        return int(self.round_scores.numel())

    def __repr__(self) -> str:
        return (
            f"CoresetResult({len(self)} items, {self.rounds} rounds, stop_reason={self.stop_reason!r}, "
            f"threshold={self.threshold}, k={self.centroids.shape[0]})"
        )

    def save(self, path: str | os.PathLike) -> None:
        """Writes an .npz file atomically (see atomic_write)."""
        meta = {
            "format": FORMAT,
            "stop_reason": self.stop_reason,
            "threshold": self.threshold,
            "params": self.params,
            "stats": self.stats,
        }
        arrays = {
            "indices": self.indices.cpu().numpy().astype(np.int64),
            "round_scores": self.round_scores.cpu().numpy().astype(np.float64),
            "round_sizes": self.round_sizes.cpu().numpy().astype(np.int64),
            "centroids": self.centroids.cpu().float().numpy(),
            "meta": np.array(json.dumps(meta, allow_nan=False)),
        }
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CoresetResult":
        """Reads a file written by save(); unpickles nothing."""
        with np.load(os.fspath(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a simcore coreset file (format {meta.get('format')!r})")
            return cls(
                indices=torch.from_numpy(z["indices"].copy()),
                round_scores=torch.from_numpy(z["round_scores"].copy()),
                round_sizes=torch.from_numpy(z["round_sizes"].copy()),
                stop_reason=meta["stop_reason"],
                threshold=meta["threshold"],
                centroids=torch.from_numpy(z["centroids"].copy()),
                params=meta["params"],
                stats=meta["stats"],
            )
