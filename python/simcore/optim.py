"""The learning-rate schedule and LARS."""
from __future__ import annotations

import math

import torch


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class LARS(torch.optim.SGD):
    """SGD with momentum whose update of each weight matrix is scaled by the layer-wise
    trust ratio eta * ||w|| / ||grad + wd w|| (You et al., 2017); biases and norm
    parameters (1-D) are updated as by plain SGD, without weight decay."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02):
        self.eta = eta
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=0.0)
        self._wd = weight_decay

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p.dim() == 1:
                    continue
                g = p.grad.add(p, alpha=self._wd)
                w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                trust = torch.where((w_norm > 0) & (g_norm > 0), self.eta * w_norm / g_norm,
                                    torch.ones_like(w_norm))
                p.grad.copy_(g.mul_(trust))
        return super().step(closure)
