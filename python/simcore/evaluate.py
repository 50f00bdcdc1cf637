"""Evaluation on frozen features: weighted kNN (cosine, votes exp(s / 0.07), k = 20 and
200, as the paper's Table 7a) and a linear probe (features computed once; the final
epoch's top-1 and mean-per-class accuracy on the test split; never an epoch chosen on it)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from .augment import Augment, normalize


@torch.no_grad()
def features(backbone: torch.nn.Module, images: torch.Tensor, size: int, batch_size: int = 512,
             device: Optional[torch.device] = None) -> torch.Tensor:
    """Avg-pooled backbone features (float32, CPU) of uint8 images [N, 3, H, W]."""
    device = device or next(backbone.parameters()).device
    backbone.eval()
    cfg = Augment(size=size)
    out = []
    for a in range(0, images.shape[0], batch_size):
        x = normalize(images[a:a + batch_size].to(device), cfg)
        out.append(backbone(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, getattr(backbone, "feature_dim", 0))


def _check(train_f, train_y, test_f, test_y):
    if train_f.dim() != 2 or test_f.dim() != 2 or train_f.shape[1] != test_f.shape[1]:
        raise ValueError(f"features must be [N, d] with the same d, got {tuple(train_f.shape)} "
                         f"and {tuple(test_f.shape)}")
    if train_y.shape != (train_f.shape[0],) or test_y.shape != (test_f.shape[0],):
        raise ValueError("one label per feature row is needed")
    if train_f.shape[0] == 0 or test_f.shape[0] == 0:
        raise ValueError("empty train or test features")
    if bool((train_y < 0).any()) or bool((test_y < 0).any()):
        raise ValueError("unlabelled images (label -1, e.g. stl10's unlabeled split) cannot be "
                         "evaluated: give labelled train and test sets")


@torch.no_grad()
def knn(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
        ks: Sequence[int] = (20, 200), temperature: float = 0.07, chunk: int = 1024) -> Dict[int, float]:
    """Top-1 accuracy (%) of a weighted kNN classifier for each k."""
    _check(train_f, train_y, test_f, test_y)
    train = F.normalize(train_f.float(), dim=1)
    test = F.normalize(test_f.float(), dim=1)
    classes = int(max(train_y.max(), test_y.max())) + 1
    kmax = min(max(ks), train.shape[0])
    correct = {k: 0 for k in ks}
    for a in range(0, test.shape[0], chunk):
        sims, idx = (test[a:a + chunk] @ train.T).topk(kmax, dim=1)
        weights = (sims / temperature).exp()
        labels = train_y[idx]
        for k in ks:
            kk = min(k, kmax)
            votes = torch.zeros(sims.shape[0], classes).scatter_add_(1, labels[:, :kk], weights[:, :kk])
            correct[k] += int((votes.argmax(1) == test_y[a:a + chunk]).sum())
    return {k: 100.0 * correct[k] / test.shape[0] for k in ks}


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                 test_y: torch.Tensor, epochs: int = 100, lr: float = 0.1, batch_size: int = 256,
                 weight_decay: float = 5e-4, seed: int = 0, val_fraction: float = 0.0) -> Dict[str, float]:
    """A linear classifier on standardised frozen features (SGD, momentum 0.9, cosine lr).
    Returns the final epoch's test top-1 and mean-per-class accuracy (%). val_fraction > 0
    holds that share of the training rows out (seeded) and also reports their accuracy,
    for tuning lr / epochs / weight decay (Python API; the CLI exposes lr and epochs)
    without looking at the test split."""
    _check(train_f, train_y, test_f, test_y)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction > 0:  # one probe trained on the rest of train, scored on both
        perm = torch.randperm(train_f.shape[0], generator=torch.Generator().manual_seed(seed + 1))
        n_val = max(1, int(round(val_fraction * train_f.shape[0])))
        val, fit = perm[:n_val], perm[n_val:]
        both = torch.cat([test_f, train_f[val]])
        both_y = torch.cat([test_y, train_y[val]])
        scored = _probe(train_f[fit], train_y[fit], both, epochs, lr, batch_size, weight_decay, seed)
        out = _accuracy(scored[:test_f.shape[0]], test_y)
        on_val = _accuracy(scored[test_f.shape[0]:], both_y[test_f.shape[0]:])
        return {**out, "val_top1": on_val["top1"], "val_mean_per_class": on_val["mean_per_class"]}
    return _accuracy(_probe(train_f, train_y, test_f, epochs, lr, batch_size, weight_decay, seed), test_y)


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    hit = (pred == y).float()
    per_class = [hit[y == c].mean() for c in torch.unique(y)]
    return {"top1": 100.0 * float(hit.mean()), "mean_per_class": 100.0 * float(torch.stack(per_class).mean())}


def _probe(train_f, train_y, eval_f, epochs, lr, batch_size, weight_decay, seed) -> torch.Tensor:
    """Predicted classes of eval_f by a linear classifier trained on (train_f, train_y)."""
    mean, std = train_f.float().mean(0), train_f.float().std(0).clamp_min(1e-6)
    xtr, xte = (train_f.float() - mean) / std, (eval_f.float() - mean) / std
    classes = int(train_y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(xtr.shape[1], classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * ((xtr.shape[0] + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        order = torch.randperm(xtr.shape[0], generator=g)
        for a in range(0, xtr.shape[0], batch_size):
            i = order[a:a + batch_size]
            loss = F.cross_entropy(head(xtr[i]), train_y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return head(xte).argmax(1)
