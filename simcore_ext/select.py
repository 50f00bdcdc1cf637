"""select_coreset: SimCore's greedy selection (SPEC.md), exact and streaming.

One pass over U keeps the best K candidates per centroid (the fused `scan_topk` op); the
rounds then run from those lists. K and a per-centroid floor come from a sample of U
(planner.py), so that crowded centroids, which share their nearest rows, get lists deep
enough for the whole budget. When a list runs dry, one rescan with the selected rows
excluded refills every list expected to run dry before the budget (or the criterion's
expected stop) is reached, sized by how fast each list has been losing entries. The
kernel's scores are bit-identical between passes, so the result equals a full pass per
round. U is never held whole and no k x N matrix is ever formed."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import _ops
from .candidates import CandidateLists
from .distributed import Comm
from .checks import (SEED_MAX, as_feature_tensor, check_int, check_metric, check_rows, check_tau,
                     resolve_budget, resolve_device)
from .kmeans import make_centroids
from .planner import Plan, plan_first_pass
from .result import CoresetResult
from .sources import OpenSet, OpenSetLike

# Rows per chunk that must be read or copied (files, arrays, host data bound for a GPU):
# one chunk is resident at a time on a CPU, two pinned + two device buffers for a GPU.
_CHUNK_BYTES = {"cpu": 64 << 20, "cuda": 512 << 20}
# Tensors already on the compute device: chunks are views that only pace the progress bar
# (fewer chunks also mean fewer merges of deep candidate lists; on a GPU each chunk also
# costs a few launches and syncs).
_TENSOR_CHUNK_BYTES = {"cpu": 2 << 30, "cuda": 4 << 30}
# Bound on k x K x threads for one pass: each thread keeps 2K slots of 16 bytes per
# centroid (512 MB in all at the bound); past it, rescans refill the lists instead.
_MAX_CANDIDATE_ENTRIES = 1 << 24


def default_chunk_rows(d: int, dtype: torch.dtype, device: torch.device, in_memory: bool) -> int:
    """in_memory: U is a tensor already on `device` (chunks are views, nothing is copied)."""
    item = torch.empty((), dtype=dtype).element_size()
    table = _TENSOR_CHUNK_BYTES if in_memory else _CHUNK_BYTES
    budget = table.get(device.type, 64 << 20)
    return max(256, budget // (d * item))


_CUDA_MAX_K = 4096  # beyond it the GPU compaction falls back to slower sorts


def _resident(U: OpenSet, device: torch.device) -> bool:
    """U is a tensor already on `device`: chunks are views, nothing is copied."""
    return U.tensor_device == device


def _candidate_bound(k: int, device: torch.device) -> int:
    if device.type == "cuda":  # one buffer of 2-4 K slots per centroid, no per-thread copies
        return max(64, min(_CUDA_MAX_K, _MAX_CANDIDATE_ENTRIES // k))
    return max(64, _MAX_CANDIDATE_ENTRIES // (k * max(1, torch.get_num_threads())))


def _merge(parts: List, K: int):
    """Best K (at most) per row of concatenated (values, indices) parts, given in ascending
    row order: a stable descending sort keeps ties in ascending index order."""
    if len(parts) == 1:  # one kernel output: sorted already
        return parts[0][0][:, :K].contiguous(), parts[0][1][:, :K].contiguous()
    v = torch.cat([p[0] for p in parts], 1)
    i = torch.cat([p[1] for p in parts], 1)
    if v.device.type == "cpu":  # numpy's stable sort (timsort) merges the sorted runs in linear time
        order = torch.from_numpy(np.argsort(-v.numpy(), axis=1, kind="stable")[:, :K])
        return v.gather(1, order), i.gather(1, order)
    v, order = v.sort(dim=1, descending=True, stable=True)
    return v[:, :K].contiguous(), i.gather(1, order[:, :K])


class _Scanner:
    """Streams U (this rank's rows of it) through the fused op; validates the rows on the
    first pass; merges the ranks' lists when distributed."""

    def __init__(self, U: OpenSet, metric: str, device: torch.device, chunk_rows: int,
                 progress: bool, comm: Comm):
        self.U, self.metric, self.device = U, metric, device
        self.chunk_rows, self.progress, self.comm = chunk_rows, progress, comm
        self.passes = 0

    def scan(self, C: torch.Tensor, K: int, excluded: Optional[torch.Tensor], desc: str,
             floor: Optional[torch.Tensor] = None):
        """The K best rows per centroid, keeping only scores above `floor` (if given)."""
        # bad rows, files, memory: every rank hears of it
        best = self.comm.call(lambda: self._scan_rows(C, K, excluded, desc, floor))
        if self.comm.world > 1:  # slices ascend with the rank: ties keep the smaller row
            vs, ids = self.comm.gather(best[0]), self.comm.gather(best[1])
            best = _merge(list(zip(vs, ids)), K)
        return best[0].cpu().numpy(), best[1].cpu().numpy()

    def _scan_rows(self, C: torch.Tensor, K: int, excluded: Optional[torch.Tensor], desc: str,
                   given_floor: Optional[torch.Tensor]):
        validate = self.passes == 0
        self.passes += 1
        lo, hi = self.comm.rows(self.U.n)
        ex_dev = excluded.to(self.device) if excluded is not None else None
        if given_floor is not None:
            given_floor = given_floor.to(self.device, torch.float32).contiguous()
        best, pending, width, floor = None, [], 0, given_floor
        with tqdm(total=hi - lo, desc=desc, unit="rows", unit_scale=True,
                  disable=not self.progress or self.comm.rank != 0, leave=False) as bar:
            for start, rows, raw in self.U.chunks(self.chunk_rows, self.device, (lo, hi)):
                ex = ex_dev[start:start + rows.shape[0]] if ex_dev is not None else None
                # The K-th best so far is a floor: a later row must beat it strictly.
                v, i, norms = _ops.scan_topk(C, rows, ex, K, self.metric == "cosine", floor)
                if validate:  # norms come free with the pass; details only on failure
                    check_rows(raw, self.U.name, self.metric, offset=start, norms=norms)
                # later chunks bring few candidates (valid entries are a prefix of each row)
                m = K if bool((i[:, -1] >= 0).any()) else int((i >= 0).sum(1).max())
                rows_i = i[:, :m] if start == 0 else torch.where(i[:, :m] >= 0, i[:, :m] + start, -1)
                pending.append((v[:, :m], rows_i))
                width += m
                if width >= K:  # merge seldom; a stale floor is still a valid floor
                    best = _merge(([best] if best is not None else []) + pending, K)
                    pending, width = [], 0
                    floor = best[0][:, -1].contiguous()
                    if given_floor is not None:
                        floor = torch.maximum(floor, given_floor)
                bar.update(rows.shape[0])
        if best is None and not pending:  # an empty slice (more ranks than rows)
            pending = [(torch.empty(C.shape[0], 0, device=self.device),
                        torch.empty(C.shape[0], 0, dtype=torch.int64, device=self.device))]
        best = _merge(([best] if best is not None else []) + pending, K)
        if best[0].shape[1] < K:  # fewer candidates than K in these rows
            pad = K - best[0].shape[1]
            best = (F.pad(best[0], (0, pad), value=float("-inf")), F.pad(best[1], (0, pad), value=-1))
        return best


def _agree(plan: Plan, comm: Comm) -> Plan:
    """Rank 0's plan on every rank (each rank sampled the same rows, but a float may differ
    between devices)."""
    if comm.world == 1:
        return plan
    head = comm.broadcast(torch.tensor([plan.K, -1 if plan.items is None else plan.items,
                                        plan.floor is not None], dtype=torch.int64))
    floor = comm.broadcast(plan.floor) if bool(head[2]) else None
    return Plan(K=int(head[0]), floor=floor, items=None if head[1] < 0 else int(head[1]),
                sample_rows=plan.sample_rows)


def _round_set(picks: np.ndarray, scores: np.ndarray, room: int) -> np.ndarray:
    """S_t in selection order (by first picking centroid); if it holds more than `room`
    items, the `room` best (value = best score of a picking centroid; ties to the lower
    first centroid), still in selection order."""
    items, first, inv = np.unique(picks, return_index=True, return_inverse=True)
    value = np.full(items.shape[0], -np.inf, dtype=np.float32)
    np.maximum.at(value, inv.reshape(-1), scores)
    order = np.argsort(first, kind="stable")
    items, first, value = items[order], first[order], value[order]
    if items.shape[0] > room:
        keep = np.lexsort((first, -value))[:room]
        items = items[np.sort(keep)]
    return items


@dataclass
class _Rounds:
    order: List[np.ndarray] = field(default_factory=list)  # items added, round by round
    scores: List[float] = field(default_factory=list)
    sizes: List[int] = field(default_factory=list)
    threshold: Optional[float] = None
    reason: str = ""


def _greedy_rounds(lists: CandidateLists, scanner: _Scanner, C: torch.Tensor, N: int, B: int,
                   tau: Optional[float], patience: int, expected: Optional[int]) -> _Rounds:
    """SPEC steps 3-6, replayed from the candidate lists. `expected`: the items the plan
    expects the stop criterion to select (sizes refills; None without the criterion)."""
    out = _Rounds()
    selected = np.zeros(N, dtype=bool)
    n_sel, t = 0, 0
    while True:
        if n_sel >= B:
            out.reason = "budget"
            return out
        if n_sel == N:
            out.reason = "exhausted"
            return out
        t += 1
        lists.advance(selected)
        if lists.dry.any():
            _refill(lists, scanner, C, selected, n_sel, _horizon(n_sel, N, B, expected))
        picks, vals = lists.picks()
        g = float(np.sum(vals, dtype=np.float64) / lists.k)
        out.scores.append(g)
        if tau is not None and t == patience:
            out.threshold = tau * g
        if tau is not None and t > patience and g < out.threshold:
            out.sizes.append(0)
            out.reason = "criterion"
            return out
        items = _round_set(picks, vals, B - n_sel)
        selected[items] = True
        out.order.append(items)
        out.sizes.append(items.shape[0])
        n_sel += items.shape[0]


def _horizon(n_sel: int, N: int, B: int, expected: Optional[int]) -> int:
    """Items a refill should last for: the rest of the budget; with the stop criterion,
    to 1.5x the expected stop, and at least as many again as selected so far (so that a
    stop far beyond the plan costs log-many passes, not one per list)."""
    rest = min(B, N) - n_sel
    if expected is None:
        return rest
    return max(1, min(rest, max(n_sel, math.ceil(1.5 * expected) - n_sel, 64)))


_REFILL_MARGIN = 3.0  # over the entries a list is expected to lose (losses come in lumps)


def _refill(lists: CandidateLists, scanner: _Scanner, C: torch.Tensor, selected: np.ndarray,
            n_sel: int, horizon: int) -> None:
    """One rescan of U, the selected rows excluded, for every list expected to run dry
    within `horizon` more items: a list loses entries at the rate it has lost them since
    its last fill (crowded centroids: about one per item selected). A list that ran dry
    gets at least twice its last capacity, so that a wrong estimate costs few passes.
    Depth `horizon` always suffices: each item selected removes at most one entry."""
    # A complete list (it held every row not excluded) can only run dry once all rows are
    # selected, which the round loop handles before calling here.
    assert not (lists.dry & lists.complete).any(), "candidate list bookkeeping broke"
    taken = np.maximum(1, n_sel - lists.filled_at)
    rate = np.minimum(1.0, lists.ptr / taken)
    need = np.minimum(horizon, np.ceil(_REFILL_MARGIN * rate * horizon).astype(np.int64) + 32)
    need = np.where(lists.dry, np.maximum(need, np.minimum(horizon, 2 * lists.capacity)), need)
    rows = np.flatnonzero(~lists.complete & (lists.dry | (lists.remaining() < need)))
    K = int(need[rows].max())
    K = min(K, max(int(lists.capacity[rows].max()), _candidate_bound(rows.size, scanner.device)))
    K = scanner.comm.min_int(max(1, K))  # the same K on every rank
    val, idx = scanner.scan(C[torch.from_numpy(rows).to(C.device)], K, torch.from_numpy(selected),
                            f"simcore: rescan ({rows.size} centroids)")
    lists.fill(rows, val, idx, selected=n_sel)
    lists.rescanned += int(rows.size)
    lists.advance(selected)


def openset_topk(
    centroids: Union[torch.Tensor, np.ndarray],
    openset: OpenSetLike,
    K: int,
    *,
    metric: str = "dot",
    excluded: Union[torch.Tensor, np.ndarray, None] = None,
    device: Union[str, torch.device, None] = None,
    chunk_size: Optional[int] = None,
    progress: bool = False,
    distributed: bool = False,
):
    """The K best open-set rows per centroid, by (score desc, row asc): select_coreset's
    streamed fused pass on its own. Same inputs as select_coreset (U may be far larger
    than memory); `excluded` is an optional bool mask over U's rows. Under cosine the rows
    of U are normalised, the centroids are used as given. Returns CPU tensors: float32
    values [k, K] and int64 row indices [k, K]; missing slots hold -inf and -1."""
    metric = check_metric(metric)
    K = check_int(K, "K", 0)
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "chunk_size", 1)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {progress!r}")
    comm = Comm(distributed)

    def setup():  # per-rank work that can fail: reported to every rank before a collective
        U = OpenSet(openset)
        C = as_feature_tensor(centroids, "centroids")
        if C.shape[1] != U.d:
            raise ValueError(f"centroids have {C.shape[1]} features per row, openset has {U.d}")
        check_rows(C, "centroids", "dot")
        return U, C, _excluded_mask(excluded, U.n), resolve_device(device, U.tensor_device)

    U, C, ex, dev = comm.call(setup)
    dtype = U.compute_dtype
    C = comm.broadcast(_in_compute_dtype(C.detach().to(dev), dtype, "centroids"))
    Ks = min(K, U.n)  # slots past the number of rows stay empty
    if Ks == 0:
        v = np.full((C.shape[0], 0), -np.inf, np.float32)
        i = np.full((C.shape[0], 0), -1, np.int64)
    else:
        chunk_rows = chunk_size or default_chunk_rows(U.d, dtype, dev, _resident(U, dev))
        scanner = _Scanner(U, metric, dev, chunk_rows, progress, comm)
        with torch.no_grad():
            v, i = scanner.scan(C, Ks, ex, "simcore: top-K")
    v = np.pad(v, ((0, 0), (0, K - Ks)), constant_values=-np.inf)
    i = np.pad(i, ((0, 0), (0, K - Ks)), constant_values=-1)
    return torch.from_numpy(v), torch.from_numpy(i)


def _excluded_mask(excluded, n: int) -> Optional[torch.Tensor]:
    if excluded is None:
        return None
    try:
        ex = torch.as_tensor(excluded)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"excluded must be a bool mask of shape ({n},): {e}") from None
    if ex.dtype != torch.bool:
        raise TypeError(f"excluded must be a bool mask, got dtype {ex.dtype}")
    if tuple(ex.shape) != (n,):
        raise ValueError(f"excluded must have shape ({n},), got {tuple(ex.shape)}")
    return ex


def _in_compute_dtype(C: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """C in U's compute dtype; ValueError if a value does not fit (e.g. 1e6 in float16)."""
    out = C.to(dtype).contiguous()
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} do not fit in {str(dtype).replace('torch.', '')}, the open-set's "
                         f"dtype: some values overflow")
    return out


def select_coreset(
    target: Union[torch.Tensor, np.ndarray, None],
    openset: OpenSetLike,
    *,
    k: int = 100,
    centroids: Union[torch.Tensor, np.ndarray, None] = None,
    budget: Union[int, float, None] = None,
    tau: Optional[float] = 0.95,
    patience: int = 20,
    metric: str = "cosine",
    device: Union[str, torch.device, None] = None,
    chunk_size: Optional[int] = None,
    seed: int = 0,
    progress: bool = False,
    distributed: bool = False,
) -> CoresetResult:
    """Selects a SimCore coreset of `openset` for `target` (see SPEC.md).

    target     (n, d) target features X; may be None when `centroids` is given.
    openset    (N, d) open-set features U: a tensor, numpy array, np.memmap, .npy path,
               or a list of these (shards; global index = position in the concatenation).
    k          number of k-means centroids (every target row if k >= n); ignored when
               `centroids` is given.
    centroids  (k, d) explicit centroids (normalised under cosine).
    budget     items (int), a fraction of N in (0, 1), or None: 50 * n (50 * k without
               a target), the released sampler's cap.
    tau, patience  stopping criterion: after round `patience` fixes T = tau * g_patience,
               a later round with g_t < T stops (and is not added). tau=None: off.
    metric     "cosine" (rows L2-normalised) or "dot".
    device     where to compute; default: openset's device if it is a tensor, else CUDA
               if available, else CPU.
    chunk_size rows of U per streamed chunk (default: ~64 MB read from files/arrays on a
               CPU, ~512 MB copied to a GPU; tensors already on the device: ~2 GB on a
               CPU, ~4 GB on a GPU).
    seed       k-means seed.
    progress   show a progress bar over each pass.
    distributed  under torchrun (an initialised process group): every rank streams its
               own slice of U's rows and the candidate lists are merged across ranks; every
               rank returns the same result as one process would. Give every rank the
               same arguments; on GPUs set each rank's device first (nccl).

    float16/bfloat16 features are multiplied in their dtype (the centroids are rounded to
    it) and accumulated in float32; float32 and float64 are computed in float32.
    """
    t_start = time.perf_counter()
    metric = check_metric(metric)
    tau = check_tau(tau)
    patience = check_int(patience, "patience", 1)
    k = check_int(k, "k", 1)
    seed = check_int(seed, "seed", 0, SEED_MAX)
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "chunk_size", 1)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {progress!r}")
    comm = Comm(distributed)

    def setup():  # per-rank work that can fail: reported to every rank before a collective
        U = OpenSet(openset)
        X = None
        if target is not None:
            X = as_feature_tensor(target, "target")
            if X.shape[1] != U.d:
                raise ValueError(f"target has {X.shape[1]} features per row, openset has {U.d}")
        C0 = None
        if centroids is not None:
            C0 = as_feature_tensor(centroids, "centroids")
            if C0.shape[1] != U.d:
                raise ValueError(f"centroids have {C0.shape[1]} features per row, openset has {U.d}")
            check_rows(C0, "centroids", metric)
        elif X is None:
            raise ValueError("target is None: give the target features, or centroids=")
        else:
            check_rows(X, "target", metric)
        k_eff = C0.shape[0] if C0 is not None else min(k, X.shape[0])
        B = resolve_budget(budget, U.n, 50 * (X.shape[0] if X is not None else k_eff))
        dev = resolve_device(device, U.tensor_device)
        with torch.no_grad():
            if C0 is None:
                C = make_centroids(X.detach().to(dev), k, metric, seed)
            else:
                C = C0.detach().to(dev).float()
                C = F.normalize(C, dim=1) if metric == "cosine" else C
        return U, X, C, k_eff, B, dev

    U, X, C, k_eff, B, dev = comm.call(setup)

    with torch.no_grad():
        C = comm.broadcast(C)  # rank 0's centroids everywhere, bit for bit
        t_centroids = time.perf_counter()
        dtype = U.compute_dtype
        C_op = _in_compute_dtype(C, dtype, "centroids")
        chunk_rows = chunk_size or default_chunk_rows(U.d, dtype, dev, _resident(U, dev))
        scanner = _Scanner(U, metric, dev, chunk_rows, progress, comm)

        N = U.n
        lists = CandidateLists(k_eff)
        plan = _agree(comm.call(lambda: plan_first_pass(
            C_op, U, B, metric, tau, patience, _candidate_bound(k_eff, dev))), comm)
        t_plan = time.perf_counter()
        val, idx = scanner.scan(C_op, plan.K, None, "simcore: scan", plan.floor)
        floored = None if plan.floor is None else np.isfinite(plan.floor.numpy())
        lists.fill(np.arange(k_eff), val, idx, floored=floored)
        t_first = time.perf_counter()

        expected = None if tau is None else (plan.items or 0)
        rounds = _greedy_rounds(lists, scanner, C_op, N, B, tau, patience, expected)

    t_end = time.perf_counter()
    return CoresetResult(
        indices=torch.from_numpy(np.concatenate(rounds.order) if rounds.order else np.zeros(0, np.int64)),
        round_scores=torch.tensor(rounds.scores, dtype=torch.float64),
        round_sizes=torch.tensor(rounds.sizes, dtype=torch.int64),
        stop_reason=rounds.reason,
        threshold=rounds.threshold,
        centroids=C.float().cpu(),
        params=dict(k=k_eff, budget=B, tau=tau, patience=patience, metric=metric, seed=seed,
                    n_openset=N, n_target=None if X is None else X.shape[0], d=U.d,
                    dtype=str(dtype).replace("torch.", ""), device=str(dev),
                    chunk_size=chunk_rows, openset=U.describe(),
                    centroids_given=centroids is not None, world_size=comm.world),
        stats=dict(passes=scanner.passes, rescanned_centroids=int(lists.rescanned),
                   initial_candidates=plan.K, sample_rows=plan.sample_rows,
                   expected_items=plan.items, seconds=t_end - t_start,
                   seconds_centroids=t_centroids - t_start,
                   seconds_plan=t_plan - t_centroids,
                   seconds_first_pass=t_first - t_plan,
                   seconds_rounds_and_rescans=t_end - t_first,
                   cpu_isa=_ops.cpu_isa(), threads=torch.get_num_threads()),
    )
