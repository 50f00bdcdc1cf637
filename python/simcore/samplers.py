"""Reference samplers that read the same features as SimCore, to tell an encoder that does
not separate the target from a selection that does not use what the encoder separates:

    nearest_to_target   the open-set rows most similar (cosine) to any target feature (kNN)
    nearest_to_mean     the open-set rows most similar to the mean target direction

Each returns `size` global row indices, best first (ties: the smaller index). The open-set
is streamed in chunks (a tensor, an array, a memmap or .npy shards), never held whole.
Scores come from simcore_ext's fused pass (openset_topk), which computes a row's score
bit for bit the same wherever the row sits, so duplicate rows tie exactly."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F


def _shards(openset) -> list:
    shards = list(openset) if isinstance(openset, (list, tuple)) else [openset]
    return [np.load(x, mmap_mode="r") if isinstance(x, str) else x for x in shards]


def _chunks(openset, rows: int) -> Iterable:
    for shard in _shards(openset):
        for a in range(0, shard.shape[0], rows):
            yield shard[a:a + rows]


def _top(score_chunks: Iterable[torch.Tensor], size: int) -> np.ndarray:
    """Global indices of the `size` highest scores over the concatenated chunks. The running
    best stays ahead of each new chunk and the sort is stable: ties keep the smaller index."""
    best_s, best_i, start = torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0
    for s in score_chunks:
        i = torch.arange(start, start + s.shape[0])
        start += s.shape[0]
        if best_s.shape[0] == size:  # full: only a higher score gets in (a tie loses to the smaller index)
            keep = s > best_s[-1]
            s, i = s[keep], i[keep]
        s_all, i_all = torch.cat([best_s, s]), torch.cat([best_i, i])
        order = torch.sort(-s_all, stable=True).indices[:size]
        best_s, best_i = s_all[order], i_all[order]
    if best_i.shape[0] < size:
        raise ValueError(f"size {size} is larger than the open-set ({start} rows)")
    return best_i.numpy()


def _check(target, size: int) -> torch.Tensor:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive number of rows, got {size!r}")
    X = torch.as_tensor(np.asarray(target, dtype=np.float32)) if not torch.is_tensor(target) else target.float()
    if X.dim() != 2 or X.shape[0] == 0:
        raise ValueError(f"target features must be a non-empty [n, d] array, got shape {tuple(X.shape)}")
    return F.normalize(X, dim=1)


@torch.no_grad()
def nearest_to_target(target, openset, size: int, chunk_rows: int = 8192) -> np.ndarray:
    """Rows ranked by their largest cosine similarity to a target feature."""
    from simcore_ext import openset_topk
    X = _check(target, size)
    rows = max(1, min(chunk_rows, (4 << 20) // X.shape[0]))  # the [n, rows] scores stay ~48 MB

    def scores():
        for u in _chunks(openset, rows):  # every row's score against every target row
            v, i = openset_topk(X, u, u.shape[0], metric="cosine", device="cpu")
            yield torch.full((u.shape[0],), -torch.inf).scatter_reduce_(0, i.flatten(), v.flatten(), "amax")
    return _top(scores(), size)


@torch.no_grad()
def nearest_to_mean(target, openset, size: int, chunk_rows: int = 65536) -> np.ndarray:
    """Rows ranked by their cosine similarity to the mean of the normalised target features."""
    from simcore_ext import openset_topk
    m = F.normalize(_check(target, size).mean(dim=0, keepdim=True), dim=1)
    shards = _shards(openset)
    n = sum(int(u.shape[0]) for u in shards)
    if size > n:
        raise ValueError(f"size {size} is larger than the open-set ({n} rows)")
    return openset_topk(m, shards, size, metric="cosine", device="cpu", chunk_size=chunk_rows)[1][0].numpy()
