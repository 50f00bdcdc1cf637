"""Projection and prediction heads, and cross-rank gathering for contrastive losses."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


def wide(x: torch.Tensor) -> torch.Tensor:
    """x in at least float32: half precisions (autocast) widened, float32/float64 kept, so
    losses and statistics are float32 in training and float64 in the exactness tests."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear - BatchNorm - ReLU - Linear: SimCLR's projector, BYOL's projector and predictor,
    SimSiam's predictor."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


_AUX = {}


def aux_group():
    """A process group of its own for the collectives inside the model's forward and
    backward: on DDP's group they could interleave with DDP's gradient all-reduces, which
    run in the background during backward, and mix their data."""
    key = id(dist.distributed_c10d._get_default_group())
    if key not in _AUX:
        _AUX[key] = dist.new_group(list(range(dist.get_world_size())))
    return _AUX[key]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's x concatenated in rank order, gradients flowing back to their owners
    (one process: x itself)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x, group=aux_group()), 0)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's x concatenated in rank order, without gradients (MoCo's keys for its
    queue; one process: x itself)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous(), group=aux_group())
    return torch.cat(parts, 0)


def cosine_momentum(base: float, progress: float) -> float:
    """An EMA momentum raised from `base` to 1 on a cosine schedule (BYOL's, DINO's teacher)."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_(targets, online, m: float) -> None:
    """targets <- m targets + (1 - m) online, parameter by parameter (momentum encoders)."""
    torch._foreach_mul_(targets, m)
    torch._foreach_add_(targets, online, alpha=1 - m)


def rank_and_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
