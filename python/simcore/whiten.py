"""PCA whitening of retrieval features, fitted on the open-set (no labels):

    w = fit_whitening(["features/openset_0.npy"], dim=256)   # streamed, float64 moments
    whiten_file("features/openset_0.npy", "whitened/openset_0.npy", w)

A feature row u becomes (u - mean) @ proj, proj = the top-`dim` principal directions of
the open-set's features, each divided by the square root of its variance. Why: pooled
CNN features share a few dominant directions (what every image has in common), and cosine
similarity on raw features ranks mostly by those. Whitening gives every direction of the
open-set unit variance, so the rarer directions that set the target apart count as much:
the classic fix for image retrieval with pooled features (Jegou & Chum, ECCV 2012). On
tinyopenssl it lifts SimCore's precision at 1% from 48% to 74% with the ImageNet
EfficientNet-Lite0 at 128 px, and from 50% to 81% with Lite2 at 224 px (benchmarks/RESULTS.md). It changes the features SimCore reads, not the
selection: SPEC.md's contract holds on the whitened rows."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Sequence, Union

import numpy as np
from tqdm import tqdm

FLOOR = 1e-6  # of the largest variance: added to every variance, so near-empty directions stay small
CHUNK_ROWS = 65536

Array = Union[str, os.PathLike, np.ndarray]


@dataclass
class Whitening:
    mean: np.ndarray  # [d] float64
    proj: np.ndarray  # [d, dim] float64: principal directions / sqrt(variance + floor)
    variances: np.ndarray  # [dim] float64, largest first
    rows: int  # open-set rows it was fitted on

    @property
    def dim(self) -> int:
        return int(self.proj.shape[1])

    def apply(self, a: np.ndarray) -> np.ndarray:
        """[n, d] rows -> [n, dim] float32 whitened rows."""
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != self.mean.shape[0]:
            raise ValueError(f"whitening takes [n, {self.mean.shape[0]}] features, got shape {a.shape}")
        return ((a - self.mean) @ self.proj).astype(np.float32)

    def save(self, path: str) -> None:
        from simcore_ext.result import atomic_write
        atomic_write(path, lambda f: np.savez(f, mean=self.mean, proj=self.proj, variances=self.variances,
                                              rows=np.int64(self.rows)))

    @classmethod
    def load(cls, path: str) -> "Whitening":
        with np.load(path) as z:
            return cls(z["mean"], z["proj"], z["variances"], int(z["rows"]))


def _open(a: Array) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    return np.load(os.fspath(a), mmap_mode="r", allow_pickle=False)


def check_dim(dim) -> None:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"whitening dimension must be an integer >= 1, got {dim!r}")


def fit_whitening(arrays: Sequence[Array], dim: int, chunk_rows: int = CHUNK_ROWS,
                  progress: bool = False) -> Whitening:
    """Whitening to `dim` dimensions fitted on the rows of `arrays` (.npy paths, memmapped,
    or arrays: the open-set's shards), streamed `chunk_rows` at a time: one pass, float64
    sums shifted by the first chunk's mean (no cancellation when features sit far from 0)."""
    check_dim(dim)
    parts: List[np.ndarray] = [_open(a) for a in arrays]
    if not parts:
        raise ValueError("whitening needs open-set features to fit on")
    d = None
    for p in parts:
        if p.ndim != 2 or (d is not None and p.shape[1] != d):
            raise ValueError(f"whitening: open-set features must be [n, d] with one d, got shape {p.shape}")
        d = p.shape[1]
    n = sum(p.shape[0] for p in parts)
    if dim > d:
        raise ValueError(f"whitening dimension {dim} is larger than the features' {d}")
    if n <= dim:
        raise ValueError(f"whitening to {dim} dimensions needs more than {dim} open-set rows, got {n}")
    shift = s1 = s2 = None
    with tqdm(total=n, desc="fit whitening", unit="row", disable=not progress) as bar:
        for p in parts:
            for a in range(0, p.shape[0], chunk_rows):
                x = np.asarray(p[a:a + chunk_rows], dtype=np.float64)
                if not np.isfinite(x).all():
                    raise ValueError("whitening: the open-set features hold NaN or Inf")
                if shift is None:
                    shift, s1, s2 = x.mean(0), np.zeros(d), np.zeros((d, d))
                x = x - shift  # not in place: x may be the caller's array
                s1 += x.sum(0)
                s2 += x.T @ x
                bar.update(x.shape[0])
    mu = s1 / n
    cov = s2 / n - np.outer(mu, mu)
    var, vec = np.linalg.eigh((cov + cov.T) / 2)  # ascending
    var, vec = var[::-1][:dim], vec[:, ::-1][:, :dim]
    rank = int((var > 1e-9 * var[0]).sum()) if var[0] > 0 else 0
    if rank < dim:
        raise ValueError(f"whitening to {dim} dimensions: the open-set features vary in only {rank} "
                         f"(pass a dimension of {rank} or less)" if rank else
                         "whitening: the open-set features are all identical")
    return Whitening(shift + mu, vec / np.sqrt(var + FLOOR * var[0]), var, n)


def whiten_file(src: str, dst: str, w: Whitening, chunk_rows: int = CHUNK_ROWS) -> str:
    """The rows of the .npy file `src`, whitened, into the .npy file `dst` in `src`'s
    floating dtype (float32 for others), streamed; `dst` appears whole or not at all."""
    a = _open(src)
    dtype = a.dtype if a.dtype in (np.float16, np.float32, np.float64) else np.dtype(np.float32)
    tmp = f"{dst}.tmp-{os.getpid()}.npy"  # a killed writer's leftover is removed with the stage's temporaries
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(a.shape[0], w.dim))
        for s in range(0, a.shape[0], chunk_rows):
            with np.errstate(over="ignore"):  # checked just below
                y = w.apply(a[s:s + chunk_rows]).astype(dtype)
            if not np.isfinite(y).all():  # float16 overflow: whitened rows are O(1), so this means outliers
                raise ValueError(f"whitening {src}: rows out of {dtype}'s range after whitening "
                                 f"(use float32 features)")
            out[s:s + chunk_rows] = y
        out.flush()
        del out
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst
