"""SwAV (Caron et al., 2020): the views of an image should agree on their cluster
assignment. Each view's projection is scored against learned prototypes; the codes of the
two global crops come from those scores by Sinkhorn-Knopp (an equal share of the batch per
prototype), and every other crop predicts them ("swapped prediction").

As in the official code (facebookresearch/swav):
  - projector Linear - BN - ReLU - Linear (128-d), L2-normalised; prototypes a bias-free
    linear layer whose rows are kept L2-normalised (after every optimizer step here);
  - Sinkhorn-Knopp with a fixed number of iterations (3) and epsilon 0.05, over the scores
    of the global batch, without gradient;
  - loss: for each global crop i, the mean over the other crops v of the cross-entropy
    between i's codes and softmax(scores_v / temperature), averaged over the two;
  - multi-crop: 2 global crops and `local_crops` (6) small ones (multicrop.py);
  - an optional queue (queue_size > 0) of the last queue_size projections of each global
    crop, scored with the current prototypes and added to the Sinkhorn batch once full,
    for batches too small to spread over the prototypes.
Differences: 512 prototypes by default (ImageNet's are 3000; a small target set has fewer
clusters); the prototypes are not frozen during the first epoch. Under DDP the scores of
the whole global batch are gathered and every rank runs Sinkhorn on them (the official
code all-reduces its sums instead): the codes are those of one process with the same
batch, and the queue holds the global batch's projections, the same on every rank."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import gather, mlp, rank_and_world, wide
from .multicrop import check_local_crops, encode, multi_crop


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Codes [B, K] of scores [B, K]: Q = exp(scores / epsilon), then alternately every
    prototype's total scaled to 1/K and every sample's to 1/B; returned scaled by B (each
    row sums to 1 after the last step)."""
    q = torch.exp(scores / epsilon).T  # [K, B]
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T


class SwAV(nn.Module):
    """options: proj_dim (128), hidden (the backbone's feature width), prototypes (512),
    temperature (0.1), epsilon (0.05), sinkhorn_iterations (3), local_crops (6),
    crop_split (0.14: global crops cover [crop_split, 1] of the image), queue_size (0: off)."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 128, hidden: int = 0, prototypes: int = 512,
                 temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                 local_crops: int = 6, crop_split: float = 0.14, queue_size: int = 0):
        super().__init__()
        if not temperature > 0 or not epsilon > 0:
            raise ValueError(f"temperature and epsilon must be > 0, got {temperature}, {epsilon}")
        for name, v, low in (("prototypes", prototypes, 1), ("sinkhorn_iterations", sinkhorn_iterations, 1),
                             ("queue_size", queue_size, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        self.backbone = backbone
        self.projector = mlp(backbone.feature_dim, hidden or backbone.feature_dim, proj_dim)
        self.prototypes = nn.Linear(proj_dim, prototypes, bias=False)
        self.normalize_prototypes()
        self.register_buffer("queue", torch.zeros(2, queue_size, proj_dim))
        self.register_buffer("queued", torch.zeros((), dtype=torch.long))  # rows filled so far
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, sinkhorn_iterations
        self.local_crops, self.crop_split = check_local_crops(local_crops), crop_split

    def views(self, image_size: int, min_crop: float):
        return multi_crop(image_size, min_crop, self.crop_split, self.local_crops)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        b = views[0].shape[0]
        z = F.normalize(self.projector(encode(self.backbone, views)), dim=1)
        scores = self.prototypes(z)
        with torch.autocast(scores.device.type, enabled=False):  # the loss in float32
            scores = wide(scores)
            return self._loss(scores.view(len(views), b, -1), z.detach().view(len(views), b, -1))

    def _loss(self, scores: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        crops, b = scores.shape[:2]
        rank, _ = rank_and_world()
        logp = F.log_softmax(scores / self.temperature, dim=2)
        full = self.queue.shape[1] > 0 and int(self.queued) >= self.queue.shape[1]
        loss = 0
        for i in range(2):
            with torch.no_grad():
                s = gather(scores[i].detach())  # the global batch
                n = s.shape[0]
                if full:  # the queued projections, scored with the current prototypes
                    s = torch.cat([self.queue[i].to(s.dtype) @ self.prototypes.weight.to(s.dtype).T, s])
                q = sinkhorn(s, self.epsilon, self.iterations)[-n:][rank * b:(rank + 1) * b]
            others = [v for v in range(crops) if v != i]
            loss = loss + sum(-(q * logp[v]).sum(1).mean() for v in others) / len(others)
        self._enqueue(z[:2])
        return loss / 2

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        """The global batch's projections of the two global crops go first in the queue."""
        size = self.queue.shape[1]
        if size == 0:
            return
        new = torch.stack([gather(z[0]), gather(z[1])]).to(self.queue.dtype)[:, :size]
        n = new.shape[1]
        self.queue.copy_(torch.cat([new, self.queue[:, :size - n]], 1))
        self.queued.add_(n)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.normalize_prototypes()
