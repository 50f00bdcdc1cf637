"""Several processes (torchrun; gloo on CPUs, nccl on GPUs) selecting one coreset.

Each rank streams its own contiguous slice of U's rows; the per-centroid candidate lists
of the slices are gathered and merged in rank order, so that every rank holds the lists a
single process would have computed, and replays the same rounds: the result is the same
on every rank, and the same as in one process."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist


class Comm:
    """The process group, or a stand-in for a single process (`world == 1`)."""

    def __init__(self, distributed: bool):
        if not isinstance(distributed, bool):
            raise TypeError(f"distributed must be a bool, got {distributed!r}")
        self.on = distributed
        if distributed and not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialised process group: call "
                "torch.distributed.init_process_group() first (e.g. under torchrun)")
        self.rank = dist.get_rank() if distributed else 0
        self.world = dist.get_world_size() if distributed else 1
        self.device = torch.device("cpu")
        if distributed and dist.get_backend() == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())

    def rows(self, n: int) -> Tuple[int, int]:
        """This rank's slice of rows [lo, hi) of U."""
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def min_int(self, x: int) -> int:
        if not self.on:
            return x
        t = torch.tensor([x], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor on every rank (same shape and dtype everywhere)."""
        if not self.on:
            return t
        buf = t.detach().to(self.device).contiguous()
        dist.broadcast(buf, src=0)
        return buf.to(t.device)

    def gather(self, t: torch.Tensor) -> List[torch.Tensor]:
        """Every rank's tensor (same shape everywhere), in rank order, on t's device."""
        if not self.on:
            return [t]
        buf = t.detach().to(self.device).contiguous()
        out = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(out, buf)
        return [o.to(t.device) for o in out]

    def call(self, fn):
        """fn() on this rank; if it fails on any rank, every rank raises (before the next
        collective, so that no rank waits forever)."""
        error, result = None, None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on this rank as it was
            error = e
        self.raise_any(error)
        return result

    def raise_any(self, error: Optional[BaseException]) -> None:
        """Raises on every rank if any rank failed (so that no rank waits forever)."""
        if not self.on:
            if error is not None:
                raise error
            return
        messages: List[Optional[str]] = [None] * self.world
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        for r, m in enumerate(messages):
            if m is not None:
                raise RuntimeError(f"simcore: rank {r} failed: {m}")
