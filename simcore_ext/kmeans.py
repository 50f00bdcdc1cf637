"""Centroids of the target features: k-means (greedy k-means++ seeding, Lloyd iterations).

Deterministic for a seed on a given device: random draws come from a seeded generator,
and cluster sums are one-hot matrix products over fixed chunks (no atomics).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_CHUNK_ELEMS = 1 << 24  # bound on n x k temporaries


def _sq_dists(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, rows of x against rows of c: (n, m)."""
    return (x_sq[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]).clamp_min_(0.0)


def _assign(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    step = max(1, _CHUNK_ELEMS // max(1, c.shape[0]))
    return torch.cat([_sq_dists(x[a : a + step], x_sq[a : a + step], c).argmin(1) for a in range(0, x.shape[0], step)])


def _cluster_sums(x: torch.Tensor, assign: torch.Tensor, k: int) -> torch.Tensor:
    step = max(1, _CHUNK_ELEMS // k)
    sums = x.new_zeros((k, x.shape[1]))
    for a in range(0, x.shape[0], step):
        onehot = F.one_hot(assign[a : a + step], k).to(x.dtype)
        sums += onehot.T @ x[a : a + step]
    return sums


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++: each new centre is the best of 2 + log(k) D^2-weighted draws."""
    n = x.shape[0]
    x_sq = (x * x).sum(1)
    trials = 2 + int(math.log(k))
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    chosen = [first]
    d2 = _sq_dists(x, x_sq, x[first])[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        if total > 0:
            cand = torch.multinomial(d2 / total, trials, replacement=True, generator=generator)
        else:  # fewer distinct points than k: any point is as good
            cand = torch.randint(n, (trials,), generator=generator, device=x.device)
        new_d2 = torch.minimum(d2[:, None], _sq_dists(x, x_sq, x[cand]))
        best = int(new_d2.sum(0).argmin())
        chosen.append(cand[best : best + 1])
        d2 = new_d2[:, best]
    return x[torch.cat(chosen)].clone()


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = 100) -> torch.Tensor:
    """Lloyd's k-means on the rows of x (float32); returns (k, d) centroids.

    Stops when no assignment changes or after max_iter iterations; an empty cluster keeps
    its previous centre."""
    x = x.float()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    c = kmeans_plus_plus(x, k, generator)
    x_sq = (x * x).sum(1)
    prev = None
    for _ in range(max_iter):
        assign = _assign(x, x_sq, c)
        if prev is not None and torch.equal(assign, prev):
            break
        counts = torch.bincount(assign, minlength=k)
        sums = _cluster_sums(x, assign, k)
        filled = counts > 0
        c[filled] = sums[filled] / counts[filled, None].to(x.dtype)
        prev = assign
    return c


def make_centroids(target: torch.Tensor, k: int, metric: str, seed: int) -> torch.Tensor:
    """SPEC step 2: every target row if k >= n, else k-means; unit rows under cosine.

    `target` must already be validated (finite; non-zero rows under cosine)."""
    x = target.float()
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    c = x.clone() if k >= x.shape[0] else kmeans(x, k, seed=seed)
    return F.normalize(c, dim=1) if metric == "cosine" else c
