"""SimCLR (Chen et al., 2020): NT-Xent over the two views of a batch. Under DDP the keys
are gathered from every rank, so the loss is that of the global batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import gather_with_grad, mlp, rank_and_world, wide


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over this rank's 2B anchors of -log softmax of its positive among the other
    2N - 1 projections of the global batch (N = B x world size); cosine similarities / t."""
    with torch.autocast(z1.device.type, enabled=False):  # the loss in float32
        return _nt_xent(wide(z1), wide(z2), temperature)


def _nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    rank, _ = rank_and_world()
    b = z1.shape[0]
    keys = torch.cat([gather_with_grad(z1), gather_with_grad(z2)], 0)  # [2N, dim]
    n = keys.shape[0] // 2
    anchors = torch.cat([z1, z2], 0)  # [2B, dim]
    logits = anchors @ keys.T / temperature
    own = torch.cat([torch.arange(b), torch.arange(b) + n]) + rank * b  # anchor's own column
    positive = torch.cat([torch.arange(b) + n, torch.arange(b)]) + rank * b
    own, positive = own.to(z1.device), positive.to(z1.device)
    rows = torch.arange(2 * b, device=z1.device)
    logits = logits.index_put((rows, own), torch.tensor(float("-inf"), device=z1.device))
    return F.cross_entropy(logits, positive)


class SimCLR(nn.Module):
    """options: proj_dim (128), hidden (the backbone's feature width), temperature (0.5)."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 128, hidden: int = 0,
                 temperature: float = 0.5):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.backbone = backbone
        self.projector = mlp(backbone.feature_dim, hidden or backbone.feature_dim, proj_dim)
        self.temperature = temperature

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        b = x1.shape[0]
        z = self.projector(self.backbone(torch.cat([x1, x2], 0)))  # one pass: shared BN stats
        return nt_xent(z[:b], z[b:], self.temperature)

    def after_step(self, progress: float) -> None:
        pass
