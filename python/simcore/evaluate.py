"""Evaluation on frozen features: weighted kNN (cosine, votes exp(s / 0.07), k = 20 and
200, as the paper's Table 7a) and a linear probe (features computed once; the final
epoch's top-1 and mean-per-class accuracy on the test split; never an epoch chosen on it).
And semi-supervised fine-tuning (the paper's Table 5): the whole network, backbone and a
new linear head, trained on a class-balanced share of the labels (label_subset, finetune)."""
from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import Augment, augment, normalize


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


def label_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> Tuple[torch.Tensor, List[int]]:
    """A class-balanced, seeded subset of labelled rows: from every class, `fraction` of its
    images (rounded half up), at least one. Returns the rows (sorted) and the classes that
    were raised to one image because fraction x their count rounds to zero. One seed draws
    nested subsets: a smaller fraction's rows are among a larger one's."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction!r}")
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    if bool((labels < 0).any()):
        raise ValueError("unlabelled images (label -1) cannot be fine-tuned on: give a labelled train set")
    g = torch.Generator().manual_seed(seed)
    rows, raised = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        take = int(math.floor(fraction * members.numel() + 0.5))
        if take == 0:
            raised.append(c)
            take = 1
        rows.append(members[torch.randperm(members.numel(), generator=g)[:take]])
    return torch.sort(torch.cat(rows)).values, raised


# Batches smaller than this (a last partial batch, a subset of a few images) are filled with
# repeated images, each differently augmented: torch's CPU backward segfaulted here on
# batches of 1-3 small images (resnet18-w0.125 at 16 px).
MIN_BATCH = 8


def finetune(backbone: torch.nn.Module, train_images: torch.Tensor, train_y: torch.Tensor,
             test_images: torch.Tensor, test_y: torch.Tensor, epochs: int = 50, lr: float = 0.05,
             batch_size: int = 64, weight_decay: float = 5e-4, min_crop: float = 0.2, seed: int = 0,
             amp: str = "auto", progress: bool = False, desc: str = "finetune") -> Dict[str, float]:
    """Fine-tunes the whole `backbone` (in place, on its device) with a new zero-initialised
    linear head on uint8 images [N, 3, S, S] (S: the backbone's training size): SGD
    (momentum 0.9, weight decay on every weight), cosine lr from `lr` to 0 over every step,
    cross-entropy; each batch augmented by augment.py's batched augment with crop and flip
    only (random resized crop of area [min_crop, 1], horizontal flip; no colour jitter or
    grayscale, which would erase the colours a fine-grained class may hinge on); a batch
    under MIN_BATCH images is filled with repeats of its images. Returns the
    final epoch's test top-1 and mean-per-class accuracy (%); the test split is never used
    to choose anything. The same seed repeats a CPU run exactly."""
    for name, images, y in (("train", train_images, train_y), ("test", test_images, test_y)):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{name} images must be uint8 [N, 3, S, S], got {images.dtype} {tuple(images.shape)}")
        if y.shape != (images.shape[0],) or images.shape[0] == 0:
            raise ValueError(f"{name}: one label per image and at least one image are needed")
        if bool((y < 0).any()):
            raise ValueError(f"{name}: unlabelled images (label -1) cannot be fine-tuned on or scored")
    if train_images.shape[2:] != test_images.shape[2:] or train_images.shape[2] != train_images.shape[3]:
        raise ValueError(f"train and test images must be square and of one size, got "
                         f"{tuple(train_images.shape[2:])} and {tuple(test_images.shape[2:])}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    from .train import _autocast_dtype
    device = next(backbone.parameters()).device
    amp_dtype = _autocast_dtype(amp, device)
    classes = int(max(train_y.max(), test_y.max())) + 1
    head = torch.nn.Linear(backbone.feature_dim, classes).to(device)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    model = torch.nn.Sequential(backbone, head).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    n = train_images.shape[0]
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    cfg = Augment(size=train_images.shape[-1], scale=(min_crop, 1.0), jitter_p=0.0, gray_p=0.0)
    images, y = train_images.to(device), train_y.to(device)
    order_g = torch.Generator().manual_seed(seed)
    aug_g = torch.Generator(device=device).manual_seed(seed)
    model.train()
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=order_g).to(device)
            for a in range(0, n, batch_size):
                i = order[a:a + batch_size]
                if i.numel() < MIN_BATCH:  # repeated rows, each differently augmented
                    i = i.repeat(-(-MIN_BATCH // i.numel()))[:MIN_BATCH]
                x = augment(images[i], cfg, aug_g).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss = F.cross_entropy(model(x).float(), y[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
            last = float(loss.detach())
            if not math.isfinite(last):
                raise ValueError(f"fine-tuning diverged (loss {last}): try a lower lr")
            bar.set_postfix(loss=f"{last:.3f}")
    model.eval()
    eval_cfg = Augment(size=train_images.shape[-1])
    with torch.no_grad():
        pred = torch.cat([model(normalize(test_images[a:a + 512].to(device), eval_cfg)
                                .contiguous(memory_format=torch.channels_last)).argmax(1).cpu()
                          for a in range(0, test_images.shape[0], 512)])
    return _accuracy(pred, test_y.cpu())
