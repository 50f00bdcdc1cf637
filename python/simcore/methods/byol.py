"""BYOL (Grill et al., 2020): an online network with a predictor regresses a slowly moving
(EMA) target network's projection of the other view; symmetric, no negatives."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .heads import cosine_momentum, ema_, mlp, wide


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 2 - 2 cos(p, z) (z is a target: no gradient)."""
    with torch.autocast(p.device.type, enabled=False):  # the loss in float32
        return (2 - 2 * F.cosine_similarity(wide(p), wide(z.detach()), dim=1)).mean()


class BYOL(nn.Module):
    """options: proj_dim (256), hidden (4x the feature width, at most 4096),
    base_momentum (0.99: the target's EMA momentum, raised to 1 on a cosine schedule)."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 256, hidden: int = 0,
                 base_momentum: float = 0.99):
        super().__init__()
        if not 0 <= base_momentum <= 1:
            raise ValueError(f"base_momentum must be in [0, 1], got {base_momentum}")
        hidden = hidden or min(4096, 4 * backbone.feature_dim)
        self.backbone = backbone
        self.projector = mlp(backbone.feature_dim, hidden, proj_dim)
        self.predictor = mlp(proj_dim, hidden, proj_dim)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self._target_params():
            p.requires_grad_(False)
        self.base_momentum = base_momentum

    def _target_params(self):
        return list(self.target_backbone.parameters()) + list(self.target_projector.parameters())

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        b = x1.shape[0]
        x = torch.cat([x1, x2], 0)
        p = self.predictor(self.projector(self.backbone(x)))
        with torch.no_grad():
            z = self.target_projector(self.target_backbone(x))
        return byol_loss(p[:b], z[b:]) + byol_loss(p[b:], z[:b])

    def momentum(self, progress: float) -> float:
        return cosine_momentum(self.base_momentum, progress)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        online = list(self.backbone.parameters()) + list(self.projector.parameters())
        ema_(self._target_params(), online, self.momentum(progress))
        # BatchNorm running statistics follow the online network
        for t, o in ((self.target_backbone, self.backbone), (self.target_projector, self.projector)):
            for tb, ob in zip(t.buffers(), o.buffers()):
                tb.copy_(ob)
