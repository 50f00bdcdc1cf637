"""SimSiam (Chen & He, 2021): one network, no negatives and no momentum encoder; a
predictor maps one view's projection onto the other's, which is held fixed by a
stop-gradient. Symmetric negative cosine: loss = -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2,
between -1 and 1.

Heads as in the paper, scaled to the backbone like SimCLR's and BYOL's here: the
projector has 3 layers of width proj_dim (the paper's 2048 = ResNet-50's feature width,
so the backbone's feature width by default), each Linear - BatchNorm (- ReLU), the last
BatchNorm without affine parameters; the predictor is a bottleneck MLP
proj_dim -> proj_dim / 4 -> proj_dim (the paper's 2048 -> 512 -> 2048). The two views go
through the network in one pass, as in SimCLR and BYOL here (BatchNorm statistics over
both views; the official code runs them one after the other). The paper's fixed predictor
learning rate is not reproduced: the trainer's schedule applies to every parameter."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import mlp, wide


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """-(mean cos(p1, z2) + mean cos(p2, z1)) / 2 over the batch; z1 and z2 get no gradient."""
    with torch.autocast(p1.device.type, enabled=False):  # the loss in float32
        return -(F.cosine_similarity(wide(p1), wide(z2.detach()), dim=1).mean() +
                 F.cosine_similarity(wide(p2), wide(z1.detach()), dim=1).mean()) / 2


def projector(in_dim: int, dim: int) -> nn.Sequential:
    """SimSiam's 3-layer projector: (Linear - BN - ReLU) x 2, Linear - BN without affine."""
    return nn.Sequential(nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False))


class SimSiam(nn.Module):
    """options: proj_dim (the backbone's feature width), pred_dim (proj_dim / 4: the
    predictor's bottleneck)."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 0, pred_dim: int = 0):
        super().__init__()
        proj_dim = proj_dim or backbone.feature_dim
        pred_dim = pred_dim or max(1, proj_dim // 4)
        self.backbone = backbone
        self.projector = projector(backbone.feature_dim, proj_dim)
        self.predictor = mlp(proj_dim, pred_dim, proj_dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        b = x1.shape[0]
        z = self.projector(self.backbone(torch.cat([x1, x2], 0)))  # one pass: shared BN stats
        p = self.predictor(z)
        return simsiam_loss(p[:b], p[b:], z[:b], z[b:])

    def after_step(self, progress: float) -> None:
        pass
