"""DINO (Caron et al., 2021): self-distillation without labels. A student network matches
the output distribution of a teacher, an exponential moving average of the student, across
views: the teacher sees the two global crops, the student every crop; each teacher output
is centred (against collapse onto one dimension) and sharpened with a low temperature
(against collapse onto the uniform distribution).

As in the official code (facebookresearch/dino):
  - head: MLP in -> hidden -> hidden -> 256 (GELU), L2-normalised, then a
    weight-normalised bias-free linear layer to out_dim with its norms fixed at 1
    (norm_last_layer): here the weight rows are normalised in the forward pass;
  - loss: the mean over (teacher global crop i, student crop v != i) pairs of the
    cross-entropy between softmax((t_i - center) / teacher_temp) and
    softmax(s_v / temperature); teacher_temp 0.04, temperature (the student's) 0.1;
  - the center: an EMA (0.9) of the teacher's mean output over the global batch, updated
    after each loss; a buffer, so it is checkpointed;
  - the teacher's EMA momentum rises from base_momentum (0.996) to 1 on a cosine schedule
    over training; its BatchNorm layers (ResNets) keep their own running statistics;
  - multi-crop: 2 global crops and `local_crops` (8) small ones (multicrop.py), the global
    crops covering [crop_split, 1] = [0.4, 1] of the image.
Differences: BatchNorm in the head's MLP by default (head_batch_norm; the official
use_bn_in_head is off): without it, on the 1,800 dog images at 32 px (resnet18-w0.25, 300
steps, SGD lr 0.1 or 0.015) the outputs collapsed to uniform (the loss reached log 4096
within 4 to 8 of the 22 epochs and stayed, kNN k=20 18.3% against 24.3% for the random initialisation),
because the untrained backbone's features are so alike (mean cosine 0.89) that the
centred teacher is nearly uniform; with it, no collapse (kNN k=200 29.0% against 22.3%;
benchmarks/RESULTS.md). out_dim 4096 by default (ImageNet's is 65536), the head's hidden
width the backbone's feature width x 4 capped at 2048 (official 2048); norm_last_layer
(on) as the official option: off, each output row's scale is learned; no teacher-temperature warm-up
(the official default warms from 0.04 to 0.04), no last-layer freezing during the first
epoch and no gradient clipping. Under DDP the teacher outputs of the whole global batch
are gathered for the center, so every rank updates it as one process would."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .heads import cosine_momentum, ema_, gather, wide
from .multicrop import check_local_crops, encode, multi_crop


class DINOHead(nn.Module):
    """The weight-normalised last layer: rows W_k / |W_k| scaled by g_k; g is fixed at 1 with
    norm_last_layer, learned otherwise."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int = 256, norm_last_layer: bool = True,
                 batch_norm: bool = False):
        super().__init__()
        bn = (lambda: nn.BatchNorm1d(hidden)) if batch_norm else nn.Identity
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), bn(), nn.GELU(), nn.Linear(hidden, hidden), bn(),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.Linear(bottleneck, out_dim, bias=False)
        self.last_scale = None if norm_last_layer else nn.Parameter(torch.ones(out_dim, 1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        w = F.normalize(self.last.weight, dim=1)
        return F.linear(x, w if self.last_scale is None else w * self.last_scale)


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
              temperature: float, teacher_temp: float) -> torch.Tensor:
    """student [crops, B, K], teacher [2, B, K] (no gradient): the mean over pairs
    (i, v != i) of the batch-mean cross-entropy of softmax((teacher_i - center) /
    teacher_temp) against softmax(student_v / temperature)."""
    with torch.autocast(student.device.type, enabled=False):  # the loss in float32
        logp = F.log_softmax(wide(student) / temperature, dim=-1)
        q = F.softmax((wide(teacher.detach()) - center) / teacher_temp, dim=-1)
        terms = [-(q[i] * logp[v]).sum(-1).mean() for i in range(q.shape[0]) for v in range(logp.shape[0])
                 if v != i]
        return sum(terms) / len(terms)


class DINO(nn.Module):
    """options: out_dim (4096), hidden (4x the feature width, at most 2048), temperature
    (0.1, the student's), teacher_temp (0.04), center_momentum (0.9), base_momentum (0.996),
    local_crops (8), crop_split (0.4), norm_last_layer (True), head_batch_norm (True)."""

    def __init__(self, backbone: nn.Module, out_dim: int = 4096, hidden: int = 0, temperature: float = 0.1,
                 teacher_temp: float = 0.04, center_momentum: float = 0.9, base_momentum: float = 0.996,
                 local_crops: int = 8, crop_split: float = 0.4, norm_last_layer: bool = True,
                 head_batch_norm: bool = True):
        super().__init__()
        if not temperature > 0 or not teacher_temp > 0:
            raise ValueError(f"temperature and teacher_temp must be > 0, got {temperature}, {teacher_temp}")
        for name, m in (("center_momentum", center_momentum), ("base_momentum", base_momentum)):
            if not 0 <= m <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {m}")
        self.backbone = backbone
        self.head = DINOHead(backbone.feature_dim, out_dim, hidden or min(2048, 4 * backbone.feature_dim),
                             norm_last_layer=norm_last_layer, batch_norm=head_batch_norm)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.head)
        for p in self._teacher_params():
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(out_dim))
        self.temperature, self.teacher_temp = temperature, teacher_temp
        self.center_momentum, self.base_momentum = center_momentum, base_momentum
        self.local_crops, self.crop_split = check_local_crops(local_crops), crop_split

    def _teacher_params(self):
        return list(self.teacher_backbone.parameters()) + list(self.teacher_head.parameters())

    def views(self, image_size: int, min_crop: float):
        return multi_crop(image_size, min_crop, self.crop_split, self.local_crops)

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        b = views[0].shape[0]
        student = self.head(encode(self.backbone, views)).view(len(views), b, -1)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(views[:2], 0))).view(2, b, -1)
        loss = dino_loss(student, teacher, self.center, self.temperature, self.teacher_temp)
        self._update_center(teacher)
        return loss

    @torch.no_grad()
    def _update_center(self, teacher: torch.Tensor) -> None:
        batch = gather(wide(teacher).flatten(0, 1)).mean(0)  # over both global crops of every rank
        self.center.mul_(self.center_momentum).add_(batch.to(self.center.dtype), alpha=1 - self.center_momentum)

    def momentum(self, progress: float) -> float:
        return cosine_momentum(self.base_momentum, progress)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        student = list(self.backbone.parameters()) + list(self.head.parameters())
        ema_(self._teacher_params(), student, self.momentum(progress))
