"""The open-set U as row shards, streamed chunk by chunk.

A shard is a torch tensor, a numpy array or memmap, or a path to a `.npy` file; a list of
them is one open-set whose global row index is the position in the concatenation. `.npy`
paths are walked chunk by chunk with their pages released behind the reader, so resident
memory stays at about one chunk whatever the file size (a user's np.memmap keeps every
page it touched resident until the OS reclaims it: prefer paths for huge files).
"""
from __future__ import annotations

import mmap
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
        """Rows [start, stop) in the shard's dtype. The rows stay readable after the next
        read (a file shard may then have dropped their pages, which re-read from disk)."""
        raise NotImplementedError

    def gather(self, idx: np.ndarray) -> torch.Tensor:
        """A copy of rows `idx` (ascending), as float32 on the CPU."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorShard(Shard):
    def __init__(self, t: torch.Tensor, name: str):
        if t.dtype not in TORCH_FLOATS:
            raise TypeError(f"{name} must hold floating-point features, got dtype {t.dtype}")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} is on the {t.device} device: expected a CPU or CUDA tensor")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, d), got shape {tuple(t.shape)}")
        self.t, self.name = t, name
        self.rows, self.d, self.dtype = t.shape[0], t.shape[1], t.dtype

    def read(self, start, stop):
        return self.t[start:stop]

    def gather(self, idx):
        return self.t.index_select(0, torch.from_numpy(idx).to(self.t.device)).to("cpu", torch.float32)


class ArrayShard(Shard):
    def __init__(self, a: np.ndarray, name: str):
        self.dtype = torch_dtype_of_numpy(a.dtype, name)
        if a.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows, d), got shape {a.shape}")
        self.a, self.name = a, name
        self.rows, self.d = a.shape

    def read(self, start, stop):
        return numpy_to_torch(self.a[start:stop])

    def gather(self, idx):
        return numpy_to_torch(self.a[idx]).float()


class NpyFileShard(Shard):
    """A C-ordered `.npy` file, mapped read-only and walked chunk by chunk: each chunk is a
    zero-copy view; the next chunk's pages are requested ahead (MADV_WILLNEED) and the
    previous chunk's pages are dropped from this process (MADV_DONTNEED), so resident
    memory stays at about one chunk whatever the file size."""

    def __init__(self, path: str, name: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: no such file: {path}")
        try:
            header = np.load(path, mmap_mode="r")  # parses and checks the header and size
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
        self._fortran_map = header if self.fortran else None  # rare: read through numpy
        del header
        self._map: Optional[mmap.mmap] = None
        self._held: Optional[Tuple[int, int]] = None  # page range of the last chunk

    def _advise(self, advice: str, byte_range: Tuple[int, int]) -> None:
        """madvise over the pages covering [start, end), where the platform has it."""
        start, end = byte_range
        start -= start % mmap.PAGESIZE
        end = min(end, len(self._map))
        if end > start and hasattr(mmap, advice) and hasattr(self._map, "madvise"):
            self._map.madvise(getattr(mmap, advice), start, end - start)

    def read(self, start, stop):
        if self._fortran_map is not None:
            return numpy_to_torch(self._fortran_map[start:stop])
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if self._held is not None:  # the previous chunk is done with
            self._advise("MADV_DONTNEED", self._held)
        row_bytes = self.d * self.file_dtype.itemsize
        begin, end = self.offset + start * row_bytes, self.offset + stop * row_bytes
        self._held = (begin, end)
        self._advise("MADV_WILLNEED", (end, end + (stop - start) * row_bytes))  # read ahead
        rows = np.frombuffer(self._map, dtype=self.file_dtype, count=(stop - start) * self.d, offset=begin)
        return numpy_to_torch(rows.reshape(stop - start, self.d))

    def gather(self, idx):
        """Runs of consecutive rows read with pread: through a map, the kernel's read-around
        would make ~1 MB resident per run touched (a sample of 1024 runs: ~1 GB)."""
        if self._fortran_map is not None:
            return numpy_to_torch(self._fortran_map[idx]).float()
        row_bytes = self.d * self.file_dtype.itemsize
        out = np.empty((idx.size, self.d), dtype=self.file_dtype)
        cuts = np.flatnonzero(np.diff(idx) != 1) + 1
        with open(self.path, "rb") as f:
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, idx.size]):
                want = int(b - a) * row_bytes
                buf = os.pread(f.fileno(), want, self.offset + int(idx[a]) * row_bytes)
                if len(buf) != want:
                    raise ValueError(f"{self.name}: {self.path} is shorter than its header says")
                out[a:b] = np.frombuffer(buf, dtype=self.file_dtype).reshape(b - a, self.d)
        return numpy_to_torch(out).float()

    def close(self):
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a chunk view is still alive; the map closes with it
                pass
            self._map, self._held = None, None


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
        self, chunk_rows: int, device: torch.device, rows: Optional[Tuple[int, int]] = None
    ) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
        """Yields (global start, rows on `device` in the compute dtype, the raw rows) for
        the global rows [lo, hi) given by `rows` (default: all).

        Chunks never span shards and are the same in every pass; use each before asking
        for the next (a file chunk's pages are released from memory then). Host rows bound
        for a GPU go through pinned buffers, the next chunk's copy overlapping this one's use."""
        lo, hi = rows if rows is not None else (0, self.n)
        plan = []
        for s, base in zip(self.shards, self.offsets):
            for a in range(max(lo - base, 0), min(hi - base, s.rows), chunk_rows):
                plan.append((s, base, a, min(a + chunk_rows, hi - base, s.rows)))
        try:
            on_gpu = self.tensor_device is not None and self.tensor_device.type == "cuda"
            if device.type == "cuda" and not on_gpu:
                yield from self._pinned_chunks(plan, chunk_rows, device)
                return
            dtype = self.compute_dtype
            for s, base, a, stop in plan:
                raw = s.read(a, stop)
                yield base + a, raw.to(device=device, dtype=dtype), raw
        finally:
            for s in self.shards:
                s.close()

    def _pinned_chunks(self, plan, chunk_rows: int, device: torch.device):
        """Double buffering: chunk c+1 is staged in pinned memory and copied on a side
        stream while the caller's kernels use chunk c on the current stream."""
        dtype = self.compute_dtype
        compute = torch.cuda.current_stream(device)
        copier = torch.cuda.Stream(device)
        staging: List[Optional[torch.Tensor]] = [None, None]
        on_device: List[Optional[torch.Tensor]] = [None, None]
        copied = [torch.cuda.Event(), torch.cuda.Event()]
        released: List[Optional[torch.cuda.Event]] = [None, None]

        def stage(item, b):
            s, base, a, stop = item
            raw = s.read(a, stop)
            n = stop - a
            if raw.is_pinned() and raw.dtype == dtype and raw.is_contiguous():
                src = raw  # already pinned: copy straight from it
            else:
                if staging[b] is None:
                    staging[b] = torch.empty((chunk_rows, self.d), dtype=dtype, pin_memory=True)
                copied[b].synchronize()  # the last copy out of this staging buffer is done
                src = staging[b][:n]
                src.copy_(raw)
            if on_device[b] is None:
                on_device[b] = torch.empty((chunk_rows, self.d), dtype=dtype, device=device)
            with torch.cuda.stream(copier):
                if released[b] is not None:
                    copier.wait_event(released[b])
                on_device[b][:n].copy_(src, non_blocking=True)
                copied[b].record(copier)
            return base + a, on_device[b][:n], raw

        copier.wait_stream(compute)  # the device buffers may reuse memory compute still reads
        try:
            pending = stage(plan[0], 0) if plan else None
            for c in range(len(plan)):
                b = c % 2
                following = stage(plan[c + 1], 1 - b) if c + 1 < len(plan) else None
                compute.wait_event(copied[b])
                yield pending
                released[b] = torch.cuda.Event()
                released[b].record(compute)
                pending = following
        finally:  # also when the caller stops early: no copy may outlive its buffers
            compute.wait_stream(copier)

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
