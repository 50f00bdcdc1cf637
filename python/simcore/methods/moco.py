"""MoCo v2 (He et al., 2020; Chen et al., 2020, "Improved Baselines with Momentum
Contrastive Learning"): a query encoder is trained to pick, among a queue of negatives,
the key that a momentum encoder computes for the other view of its image.

What makes it v2, as in the official code (facebookresearch/moco):
  - a momentum (key) encoder, an exponential moving average of the query encoder with a
    constant momentum, 0.99 by default (v2's 0.999 goes with ImageNet's 65,536-key queue;
    0.99 is the usual choice for small data and queues). Not BYOL's cosine schedule to 1:
    that is BYOL's and MoCo v3's. The key encoder's BatchNorm keeps its own running
    statistics (it runs in training mode on the keys), as in the official code;
  - a queue of negatives: the L2-normalised keys of past batches, queue_size rows, first
    in, first out, initialised with random unit vectors; a buffer, so it is checkpointed
    and a resume continues with the same negatives. 4096 by default rather than v2's
    65,536: the queue should hold fewer keys than there are training images, or an image's
    own keys from earlier epochs are among its negatives; 4096 suits sets from several
    thousand images on (CIFAR recipes use it), pass a smaller queue_size (`--queue-size`) for smaller ones;
  - InfoNCE with a temperature (0.2): cross-entropy of the positive key against the queue,
    on cosine similarities / t;
  - v2's MLP projection head: Linear - ReLU - Linear (no BatchNorm), hidden width the
    backbone's feature width (v2's 2048 = ResNet-50's), 128-d output.
The loss is v2's asymmetric one: queries from the first view, keys from the second.

Under DDP every rank's keys are gathered before they are enqueued (the official
concat_all_gather), so every rank holds the same queue, the one a single process with the
same global batch holds. Shuffle-BN is not needed and not done: it exists because with
per-GPU BatchNorm a query and its positive key are normalised with the statistics of the
same small sub-batch, a signature that tells the positive apart from the queue's keys.
The trainer's BatchNorm is global (global_bn.py on CPUs, SyncBatchNorm on GPUs): every
query and every key is normalised with the statistics of the whole global batch, exactly
as in one process, so there is no sub-batch to leak, and the DDP run stays equal to one
process (shuffling would not change that on one process either: it is a no-op there)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .heads import ema_, gather, wide


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the queries of -log softmax of cos(q, k) / t among cos(q, k) / t and
    q . queue / t (queue rows: unit vectors, no gradient); k gets no gradient."""
    with torch.autocast(q.device.type, enabled=False):  # the loss in float32
        q = F.normalize(wide(q), dim=1)
        k = F.normalize(wide(k.detach()), dim=1)
        positive = (q * k).sum(1, keepdim=True)  # [B, 1]
        negative = q @ queue.detach().to(q.dtype).T  # [B, K]
        logits = torch.cat([positive, negative], 1) / temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def v2_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """MoCo v2's projection head: Linear - ReLU - Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class MoCo(nn.Module):
    """options: proj_dim (128), hidden (the backbone's feature width), queue_size (4096),
    temperature (0.2), momentum (0.99: the key encoder's EMA momentum, constant)."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 128, hidden: int = 0, queue_size: int = 4096,
                 temperature: float = 0.2, momentum: float = 0.99):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, got {queue_size!r}")
        self.backbone = backbone
        self.projector = v2_head(backbone.feature_dim, hidden or backbone.feature_dim, proj_dim)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_projector = copy.deepcopy(self.projector)
        for p in self._key_params():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # the next row written
        self.temperature = temperature
        self.momentum = momentum

    def _key_params(self):
        return list(self.key_backbone.parameters()) + list(self.key_projector.parameters())

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        q = self.projector(self.backbone(x1))
        with torch.no_grad():
            k = self.key_projector(self.key_backbone(x2))
        loss = info_nce(q, k, self.queue.clone(), self.temperature)  # the queue before this batch
        self._enqueue(k)
        return loss

    @torch.no_grad()
    def _enqueue(self, k: torch.Tensor) -> None:
        """The global batch's normalised keys, in rank order, replace the queue's oldest rows
        (a batch larger than the queue leaves its last queue_size keys)."""
        keys = gather(F.normalize(wide(k), dim=1).to(self.queue.dtype))
        n, size = keys.shape[0], self.queue.shape[0]
        m = min(n, size)
        rows = (self.queue_ptr + torch.arange(n - m, n, device=keys.device)) % size
        self.queue.index_copy_(0, rows, keys[n - m:])
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        online = list(self.backbone.parameters()) + list(self.projector.parameters())
        ema_(self._key_params(), online, self.momentum)
