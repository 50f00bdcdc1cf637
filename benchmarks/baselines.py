"""What simcore is measured against.

released_sampler: the authors' released greedy sampler (util/sampling.py of
  sungnyun/openssl-simcore) restated with SPEC.md's semantics: a dense k x N float32
  similarity matrix, a full argsort per centroid, one Python deque per centroid. Its tie
  order (stable argsort), stop rule and budget truncation follow SPEC.md so that the
  indices can be asserted equal; the data structures and their cost are the sampler's.
naive_select: SPEC.md's definition with one full streamed pass over U per round.
torch_chunked_topk: chunked torch.mm + topk, merged across chunks (the obvious fused pass).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from simcore_ext.sources import OpenSet


def torch_chunked_topk(C: torch.Tensor, U: torch.Tensor, K: int, chunk: int = 65536):
    best_v = best_i = None
    for a in range(0, U.shape[0], chunk):
        s = (C @ U[a : a + chunk].T).float()
        v, i = s.topk(min(K, s.shape[1]), dim=1)
        i = i + a
        if best_v is not None:
            v, j = torch.cat([best_v, v], 1).topk(K, dim=1)
            i = torch.cat([best_i, i], 1).gather(1, j)
        best_v, best_i = v, i
    return best_v, best_i


def _round(picks, values, room):
    """SPEC.md's round set: dedup by first picking centroid, truncate by value."""
    items, value, first = [], {}, {}
    for j, (i, v) in enumerate(zip(picks, values)):
        if i not in value:
            items.append(i)
            value[i], first[i] = v, j
        else:
            value[i] = max(value[i], v)
    if len(items) > room:
        keep = set(sorted(items, key=lambda i: (-value[i], first[i]))[:room])
        items = [i for i in items if i in keep]
    return items


def released_sampler(C: torch.Tensor, U: torch.Tensor, budget: int, tau=None, patience=20):
    """The released greedy(): the dense similarity handed over as an (N, k) view, one
    deque of numpy int64 scalars per centroid (argsort(...).numpy(), ~40 bytes an entry),
    set membership and a .item() per pick, as in util/sampling.py. Only the semantics
    follow SPEC.md (stable tie order, stop rule, best-value truncation, selection order)."""
    sim = torch.cat([C @ U[a : a + 65536].T for a in range(0, U.shape[0], 65536)], 1).T
    N, K = sim.shape
    queue_list = [deque(torch.argsort(sim[:, k], descending=True, stable=True).numpy()) for k in range(K)]
    indices, order, threshold, t = set(), [], None, 0
    while len(order) < budget and len(order) < N:
        t += 1
        picks, values = [], []
        for q, queue in enumerate(queue_list):
            while True:
                i = queue[0]
                if i not in indices:
                    break
                queue.popleft()
            picks.append(int(i))
            values.append(sim[i, q].item())
        func_value = sum(values) / K
        if tau is not None and t == patience:
            threshold = tau * func_value
        if tau is not None and t > patience and func_value < threshold:
            break
        items = _round(picks, values, budget - len(order))
        indices.update(items)
        order += items
    return np.asarray(order, dtype=np.int64)


def naive_select(C: torch.Tensor, openset, budget: int, chunk_rows: int = 65536):
    """One full pass over U per round (dot metric, no stop criterion)."""
    U = OpenSet(openset)
    selected = torch.zeros(U.n, dtype=torch.bool)
    order = []
    while len(order) < budget and len(order) < U.n:
        best_v = torch.full((C.shape[0],), float("-inf"))
        best_i = torch.zeros(C.shape[0], dtype=torch.int64)
        for start, rows, _ in U.chunks(chunk_rows, torch.device("cpu")):
            s = (C @ rows.T).float().masked_fill(selected[start : start + rows.shape[0]], float("-inf"))
            v, i = s.max(1)  # first maximal index on ties
            better = v > best_v  # strict: earlier chunks win ties
            best_v = torch.where(better, v, best_v)
            best_i = torch.where(better, i + start, best_i)
        items = _round(best_i.tolist(), best_v.tolist(), budget - len(order))
        selected[items] = True
        order += items
    return np.asarray(order, dtype=np.int64)
