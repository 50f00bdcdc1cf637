"""CoresetResult: what a selection returns, saved losslessly and atomically (.npz, no pickle)."""
from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, Optional

import numpy as np
import torch

FORMAT = "simcore.coreset/1"
STOP_REASONS = ("budget", "criterion", "exhausted")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
    """Writes `path` through a temporary file in the same folder, synced, then renamed:
    readers see the old file or the whole new one, never a part. The file gets the mode a
    plain open() would give it: an existing file's, else 0666 less the umask. The
    temporary is named .tmp-PID-*, so a cleaner can tell a dead writer's leftovers."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (no race with
    threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        """Reads a file written by save(); unpickles nothing. Anything else (damaged,
        foreign, inconsistent) is one ValueError naming the file and what is wrong."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such coreset file: {path}")
        try:
            with zipfile.ZipFile(path) as z:
                a = {name: _read_member(z, name) for name in ("meta", "indices", "round_scores", "round_sizes",
                                                              "centroids")}
        except _Invalid as e:
            raise ValueError(f"{path} is not a simcore coreset file: {e}") from None
        except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError, NotImplementedError,
                zlib.error) as e:
            raise ValueError(f"{path} is not a simcore coreset file: cannot read it ({e})") from None
        try:
            return _validated(cls, a)
        except _Invalid as e:
            raise ValueError(f"{path} is not a simcore coreset file: {e}") from None


class _Invalid(Exception):
    pass


def _read_member(z: zipfile.ZipFile, name: str) -> np.ndarray:
    """One array of the .npz, its header checked against the bytes the archive holds
    before anything is allocated (no pickles, no object dtypes). 'meta' (read first) is
    checked for the format at once, so a foreign file is named as such."""
    try:
        info = z.getinfo(name + ".npy")
    except KeyError:
        raise _Invalid(f"it has no {name!r} array") from None
    # a header may not claim more than the member can hold: its stored bytes (at most the
    # file's size), or ~1032x them deflated (deflate's largest ratio)
    packed = min(info.compress_size, os.path.getsize(z.filename))
    limit = min(info.file_size, packed if info.compress_type == zipfile.ZIP_STORED else 1100 * packed)
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise _Invalid(f"{name!r} has an unknown .npy version {version}")
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(version, np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
        if dtype.hasobject:
            raise _Invalid(f"{name!r} holds Python objects")
        if any(not isinstance(n, int) or n < 0 for n in shape):
            raise _Invalid(f"{name!r} has an unexpected layout (shape {shape})")
        if math.prod(shape) * dtype.itemsize > limit:
            raise _Invalid(f"{name!r} claims shape {shape} of {dtype}, more than the file holds")
    with z.open(info) as f:
        a = np.lib.format.read_array(f, allow_pickle=False)
    if name == "meta":
        _meta(a)
    return a


def _meta(meta_arr: np.ndarray) -> dict:
    if meta_arr.shape != () or meta_arr.dtype.kind != "U":
        raise _Invalid("'meta' is not a JSON string")
    try:
        meta = json.loads(str(meta_arr))
    except ValueError as e:
        raise _Invalid(f"'meta' is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise _Invalid(f"its format is {fmt!r}, not {FORMAT!r}")
    return meta


def _validated(cls, a: Dict[str, np.ndarray]) -> "CoresetResult":
    meta = _meta(a["meta"])
    for key, kinds in (("stop_reason", str), ("params", dict), ("stats", dict)):
        if not isinstance(meta.get(key), kinds):
            raise _Invalid(f"meta field {key!r} is missing or not a {kinds.__name__}: {meta.get(key)!r}")
    if meta["stop_reason"] not in STOP_REASONS:
        raise _Invalid(f"unknown stop_reason {meta['stop_reason']!r} (expected one of {', '.join(STOP_REASONS)})")
    threshold = meta.get("threshold", "missing")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise _Invalid(f"threshold must be a finite number or null, got {threshold!r}")
    idx, scores, sizes, C = a["indices"], a["round_scores"], a["round_sizes"], a["centroids"]
    for name, arr, kind, ndim in (("indices", idx, "i", 1), ("round_scores", scores, "f", 1),
                                  ("round_sizes", sizes, "i", 1), ("centroids", C, "f", 2)):
        if arr.dtype.kind != kind or arr.ndim != ndim:
            raise _Invalid(f"{name!r} must be a {ndim}-D {'integer' if kind == 'i' else 'float'} array, "
                           f"got {arr.dtype} of shape {arr.shape}")
    n = meta["params"].get("n_openset")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise _Invalid(f"params.n_openset must be a non-negative int, got {n!r}")
    if idx.size and (idx.min() < 0 or (n is not None and idx.max() >= n)):
        bad = idx[(idx < 0) | (idx >= (n if n is not None else np.iinfo(np.int64).max))][0]
        raise _Invalid(f"'indices' holds {bad}, outside the open-set's rows [0, {n if n is not None else 'N'})")
    if np.unique(idx).size != idx.size:
        raise _Invalid("'indices' holds a row twice")
    if scores.shape != sizes.shape:
        raise _Invalid(f"{scores.size} round scores but {sizes.size} round sizes")
    if sizes.size and (sizes.min() < 0 or int(sizes.sum()) != idx.size):
        raise _Invalid(f"the round sizes (sum {int(sizes.sum())}) do not add up to the {idx.size} indices")
    if not sizes.size and idx.size:
        raise _Invalid(f"{idx.size} indices but no rounds")
    if not np.isfinite(C).all():
        raise _Invalid("'centroids' hold NaN or Inf")
    return cls(
        indices=torch.from_numpy(idx.astype(np.int64)),
        round_scores=torch.from_numpy(scores.astype(np.float64)),
        round_sizes=torch.from_numpy(sizes.astype(np.int64)),
        stop_reason=meta["stop_reason"],
        threshold=None if threshold is None else float(threshold),
        centroids=torch.from_numpy(C.astype(np.float32)),
        params=meta["params"],
        stats=meta["stats"],
    )
