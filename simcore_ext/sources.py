"""The open-set U as row shards, streamed chunk by chunk.

A shard is a torch tensor, a numpy array or memmap, or a path to a `.npy` file; a list of
them is one open-set whose global row index is the position in the concatenation. `.npy`
files are read with plain reads into one reused buffer (never mapped whole), so memory
stays at one chunk whatever the file size.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

OpenSetLike = Union[torch.Tensor, np.ndarray, str, os.PathLike, Sequence]

_NUMPY_FLOATS = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}
TORCH_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def torch_dtype_of_numpy(dtype: np.dtype, name: str) -> torch.dtype:
    """The torch dtype for a numpy float dtype (any byte order); TypeError otherwise."""
    if dtype.name == "bfloat16" and dtype.itemsize == 2:  # ml_dtypes.bfloat16
        return torch.bfloat16
    native = dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype
    if native not in _NUMPY_FLOATS:
        raise TypeError(f"{name} must hold floating-point features, got dtype {dtype}")
    return _NUMPY_FLOATS[native]


def numpy_to_torch(a: np.ndarray) -> torch.Tensor:
    """Zero-copy where possible (read-only memmaps included; they are never written)."""
    if a.dtype.name == "bfloat16":
        return numpy_to_torch(a.view(np.uint16)).view(torch.bfloat16)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    a = np.ascontiguousarray(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(a)


class Shard:
    """One piece of U: `rows` x `d` features of `dtype`."""

    name: str
    rows: int
    d: int
    dtype: torch.dtype

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) in the shard's dtype; valid until the next read."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorShard(Shard):
    def __init__(self, t: torch.Tensor, name: str):
        if t.dtype not in TORCH_FLOATS:
            raise TypeError(f"{name} must hold floating-point features, got dtype {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, d), got shape {tuple(t.shape)}")
        self.t, self.name = t, name
        self.rows, self.d, self.dtype = t.shape[0], t.shape[1], t.dtype

    def read(self, start, stop):
        return self.t[start:stop]


class ArrayShard(Shard):
    def __init__(self, a: np.ndarray, name: str):
        self.dtype = torch_dtype_of_numpy(a.dtype, name)
        if a.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows, d), got shape {a.shape}")
        self.a, self.name = a, name
        self.rows, self.d = a.shape

    def read(self, start, stop):
        return numpy_to_torch(self.a[start:stop])


class NpyFileShard(Shard):
    """A C-ordered `.npy` file read with plain reads into a reused buffer."""

    def __init__(self, path: str, name: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: no such file: {path}")
        try:
            header = np.load(path, mmap_mode="r")
        except Exception as e:  # not an .npy file, object arrays, truncated files...
            raise ValueError(f"{name}: cannot read {path} as a .npy array: {e}") from e
        if not isinstance(header, np.memmap):
            raise ValueError(f"{name}: {path} is not a single .npy array")
        self.path, self.name = path, name
        self.file_dtype = header.dtype
        self.dtype = torch_dtype_of_numpy(header.dtype, f"{name} ({path})")
        if header.ndim != 2:
            raise ValueError(f"{name} ({path}) must be 2-D (rows, d), got shape {header.shape}")
        self.rows, self.d = header.shape
        self.offset = header.offset
        self.fortran = bool(header.flags.f_contiguous and not header.flags.c_contiguous)
        self._mm = header if self.fortran else None  # Fortran order: read through the map
        del header
        self._file = None
        self._buf: Optional[np.ndarray] = None

    def read(self, start, stop):
        if self._mm is not None:
            return numpy_to_torch(self._mm[start:stop])
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        rows = stop - start
        if self._buf is None or self._buf.shape[0] < rows:
            self._buf = np.empty((rows, self.d), dtype=self.file_dtype)
        buf = self._buf[:rows]
        self._file.seek(self.offset + start * self.d * self.file_dtype.itemsize)
        view = memoryview(buf.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):
            n = self._file.readinto(view[got:])
            if not n:
                raise ValueError(
                    f"{self.name}: {self.path} is truncated (rows {start}..{stop} are missing)"
                )
            got += n
        return numpy_to_torch(buf)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buf = None


def open_shard(obj, name: str) -> Shard:
    if isinstance(obj, torch.Tensor):
        return TensorShard(obj, name)
    if isinstance(obj, np.ndarray):
        return ArrayShard(obj, name)
    if isinstance(obj, (str, os.PathLike)):
        return NpyFileShard(os.fspath(obj), name)
    raise TypeError(
        f"{name} must be a tensor, a numpy array, a memmap or a .npy path, got {type(obj).__name__}"
    )


class OpenSet:
    """U: shards in order; global row i is row i of the concatenation."""

    def __init__(self, openset: OpenSetLike, name: str = "openset"):
        if isinstance(openset, (list, tuple)):
            if len(openset) == 0:
                raise ValueError(f"{name} is an empty list of shards")
            self.shards = [open_shard(s, f"{name}[{i}]") for i, s in enumerate(openset)]
        else:
            self.shards = [open_shard(openset, name)]
        d0 = self.shards[0].d
        for s in self.shards[1:]:
            if s.d != d0:
                raise ValueError(f"{s.name} has {s.d} features per row, {self.shards[0].name} has {d0}")
        self.name = name
        self.d = d0
        self.offsets: List[int] = np.cumsum([0] + [s.rows for s in self.shards]).tolist()
        self.n = self.offsets[-1]
        if self.n == 0:
            raise ValueError(f"{name} is empty (0 rows)")
        if self.d == 0:
            raise ValueError(f"{name} has 0 features per row")

    @property
    def compute_dtype(self) -> torch.dtype:
        """float16/bfloat16 when every shard is; float32 otherwise (float64 included)."""
        kinds = {s.dtype for s in self.shards}
        if len(kinds) == 1 and next(iter(kinds)) in (torch.float16, torch.bfloat16):
            return next(iter(kinds))
        return torch.float32

    @property
    def tensor_device(self) -> Optional[torch.device]:
        """The device of the data when every shard is a tensor on the same device."""
        devs = {s.t.device for s in self.shards if isinstance(s, TensorShard)}
        if len(devs) == 1 and all(isinstance(s, TensorShard) for s in self.shards):
            return next(iter(devs))
        return None

    def describe(self) -> str:
        kinds = {TensorShard: "tensor", ArrayShard: "array", NpyFileShard: "npy"}
        parts = [f"{kinds[type(s)]}({s.rows}x{s.d} {str(s.dtype).replace('torch.', '')})" for s in self.shards]
        return " + ".join(parts)

    def chunks(
        self, chunk_rows: int, device: torch.device
    ) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
        """Yields (global start, rows on `device` in the compute dtype, the raw rows).

        Chunks never span shards and are the same in every pass; each is valid until the
        next one is requested."""
        dtype = self.compute_dtype
        try:
            for s, base in zip(self.shards, self.offsets):
                for a in range(0, s.rows, chunk_rows):
                    raw = s.read(a, min(a + chunk_rows, s.rows))
                    yield base + a, raw.to(device=device, dtype=dtype), raw
        finally:
            for s in self.shards:
                s.close()

    def locate(self, i: int) -> Tuple[Shard, int]:
        """The shard holding global row i and the row's index inside it."""
        j = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.shards[j], i - self.offsets[j]

    def materialize(self) -> torch.Tensor:
        """All of U as one CPU tensor in its widest dtype (for the oracle and small data)."""
        parts = []
        for s in self.shards:
            parts.append(s.read(0, s.rows).to("cpu", torch.float64).clone())
            s.close()
        return torch.cat(parts)
