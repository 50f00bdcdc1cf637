"""How deep each centroid's candidate list must go, read off a sample of U before the
first pass.

Spread centroids each take about B/k items; crowded ones (a fine-grained target sits in a
narrow cone, so its centroids share their nearest rows) lose an entry of their list for
almost every item selected, and each list must hold about B rows. Which one a run faces is
a property of U and the centroids together, so it is measured: m rows of U, spread over
it, are scored against the centroids and replayed through the greedy rounds at the budget
scaled by m/N. One sample row stands for N/m rows of U, so the depth a list reaches in the
replay, times N/m, predicts its depth in the real run.

The plan is K and a floor per centroid: the sample's score at that depth with a margin.
The pass keeps only rows above the floor, so a deep list costs about the rows it holds,
not K. A plan that falls short costs a rescan, never exactness: a floored list holds every
row above its floor (up to K), and the rounds refill it if it runs dry."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import _ops
from .candidates import CandidateLists
from .sources import OpenSet

SAMPLE_ROWS = 16384  # at most (16 MB at d = 256 float32)
SAMPLE_SHARE = 32  # at most 1/32 of U (~3% of a pass)...
SAMPLE_MIN = 4096  # ...but at least this many rows (all of a smaller U)
SAMPLE_RUNS = 1024  # runs of consecutive rows (a file is read in 1024 places, not 16k)
DEPTH_MARGIN = 2.0  # sample depth -> floor depth: room for the sample's noise and lumpy ties
DEPTH_SLACK = 4  # sample rows added to every depth (shallow lists are the noisiest)
K_MARGIN = 1.25  # K over the rows expected above the deepest floor


@dataclass
class Plan:
    K: int
    floor: Optional[torch.Tensor] = None  # (k,) float32: only scores above it are kept
    items: Optional[int] = None  # items the run is expected to select (the stop criterion)
    sample_rows: int = 0


def sample_rows(U: OpenSet, m: int) -> torch.Tensor:
    """About m rows of U (all of it if N <= m) as float32 on the CPU, the same on every call:
    U cut into SAMPLE_RUNS equal strata, one run of m / SAMPLE_RUNS consecutive rows at a
    seeded random place in each. Stratified, so that rows grouped by source (image folders
    in order) are sampled in proportion; runs, so that a file is read in few places."""
    if U.n <= m:
        rows = np.arange(U.n)
    else:
        runs = min(SAMPLE_RUNS, m)
        run = m // runs
        edges = (np.arange(runs + 1) * U.n) // runs
        rng = np.random.default_rng(0)
        starts = edges[:-1] + (rng.random(runs) * (np.diff(edges) - run + 1)).astype(np.int64)
        rows = (starts[:, None] + np.arange(run)).reshape(-1)
    parts = []
    for s, base in zip(U.shards, U.offsets):
        mine = rows[(rows >= base) & (rows < base + s.rows)] - base
        if mine.size:
            parts.append(s.gather(mine))
    return torch.cat(parts)


def plan_first_pass(C: torch.Tensor, U: OpenSet, budget: int, metric: str,
                    tau: Optional[float], patience: int, bound: int) -> Plan:
    """K and floors for the first pass over U (module docstring). C: the centroids as the
    pass sees them (normalised under cosine), on any device; bound: the largest K memory
    allows."""
    k, N = C.shape[0], U.n
    S = sample_rows(U, min(SAMPLE_ROWS, max(SAMPLE_MIN, N // SAMPLE_SHARE)))
    m = S.shape[0]
    scale = N / m
    # Sample depth the replay can need: the budget's share of the sample, and a margin.
    q = min(m, math.ceil(budget / scale * DEPTH_MARGIN) + 4 * DEPTH_SLACK + 1)
    # The fused op itself, on the pass's device and dtype: sorted lists, norms for free;
    # NaN rows score nothing here (the pass names them).
    S = S.to(C.device, C.dtype)
    val, idx, norms = _ops.scan_topk(C.contiguous(), S, None, q, metric == "cosine", None)
    lists = CandidateLists(k)
    lists.fill(np.arange(k), val.cpu().numpy(), idx.cpu().numpy())
    if q == m:  # every sample row is in every list
        lists.capacity[:] = m + 1
    depth, items = _replay(lists, m, budget / scale, tau, patience, k, scale)

    # Floors: the score at depth * margin in each centroid's sample list, lowered by the
    # rounding of a d-term float32 dot product, so that rows tying with it in the pass
    # (duplicates of a sample row) are kept whatever the order of summation.
    pos = np.ceil(DEPTH_MARGIN * (depth + 1)).astype(np.int64) + DEPTH_SLACK
    expected = (np.where(pos < lists.length, pos, m) * scale).max()  # rows above the deepest floor
    K = int(min(N, budget, bound, math.ceil(K_MARGIN * expected) + 16))
    # Where K is capped (by the budget: depth B always suffices, or by memory), floors that
    # let ~1.5 K rows through: enough to fill the list, and within the 2K slots a reservoir
    # holds before it must compact (sort) them away.
    cap = np.maximum(depth + 1, np.floor(1.5 * K / scale).astype(np.int64))
    pos = np.minimum(pos, cap)
    has_floor = pos < lists.length
    floor = np.full(k, -np.inf, dtype=np.float32)
    row_norm = 1.0 if metric == "cosine" else float(torch.nan_to_num(norms, 0.0, 0.0, 0.0).max())
    rounding = 4 * (C.shape[1] + 4) * 2.0**-24 * C.float().norm(dim=1).cpu().numpy() * row_norm
    rows = np.flatnonzero(has_floor)
    floor[rows] = lists.val[rows, pos[rows]] - rounding[rows]
    return Plan(K=max(1, K), floor=torch.from_numpy(floor), sample_rows=m,
                items=None if items is None else int(min(budget, items)))


def _replay(lists: CandidateLists, m: int, budget: float, tau: Optional[float], patience: int,
            k: int, scale: float):
    """The greedy rounds on the sample, to the scaled budget or to where the stop criterion
    is expected to fire. Returns each list's depth (sample entries passed) and, with the
    criterion, the items the full run is expected to select (None without it)."""
    selected = np.zeros(m, dtype=bool)
    n_sel, threshold = 0, None
    # The full run fixes its threshold after `patience` rounds of at most k items each: the
    # sample round reached at that many items (a deeper, lower score: a later stop, a deeper
    # plan; erring that way costs memory, not a pass).
    at_patience = patience * k / scale
    while n_sel < budget and n_sel < m:
        lists.advance(selected)
        if lists.dry.any():  # a sample list ran out: plan for all of it
            break
        picks, vals = lists.picks()
        items = np.unique(picks)
        g = float(np.mean(vals, dtype=np.float64))
        if tau is not None:
            if threshold is None and n_sel + items.shape[0] > at_patience:
                threshold = tau * g
            elif threshold is not None and g < threshold:
                break
        selected[items] = True
        n_sel += items.shape[0]
    lists.advance(selected)
    items = math.ceil(n_sel * scale) if tau is not None else None
    return lists.ptr.copy(), items
