"""BatchNorm whose batch statistics span every rank, on CPUs too (torch's SyncBatchNorm
runs on GPUs only): with it a DDP run normalises exactly the batch a single process
would, so the two runs compute the same loss."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm1d/2d with statistics all-reduced over the process group while training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        from .methods.heads import aux_group, wide
        group = aux_group()
        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = wide(x)
        # two passes (mean, then squared deviations): E[x^2] - E[x]^2 loses digits when the
        # mean is large; differentiable collectives carry the gradients to every rank
        count = torch.tensor([float(x.numel() // c)], device=x.device)
        s1 = all_reduce(torch.cat([xf.sum(dims), count]), group=group)
        n = s1[-1]
        mean = s1[:c] / n
        var = all_reduce((xf - mean.view(shape)).square().sum(dims), group=group) / n  # biased, as BN normalises
        with torch.no_grad():
            if self.track_running_stats:
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(float(n) - 1, 1.0), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2-D to 4-D input, got {x.dim()}-D")


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces every BatchNorm1d/2d by GlobalBatchNorm (same parameters and buffers)."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        for mine, theirs in zip(new.parameters(), module.parameters()):
            mine.requires_grad_(theirs.requires_grad)  # e.g. BYOL's frozen target network
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
