"""Multi-crop (SwAV, DINO): two global crops at the training size and several small local
crops, each a batched augmentation on the training device like SimCLR's two views.

The crop areas split at `split`: global crops cover [split, 1] of the image, local crops
[min_crop, split] (min_crop is the run's --min-crop; the papers use 0.05). Local crops are
3/7 of the training size (the papers' 96 px at 224 px), rounded to a multiple of the ViT
patch for that size so that ViTs take them too (32 px -> 12 px, 64 -> 24, 224 -> 96)."""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from ..augment import Augment
from ..models import vit_patch


def local_size(image_size: int) -> int:
    p = vit_patch(image_size)
    return max(p, round(image_size * 3 / 7 / p) * p)


def multi_crop(image_size: int, min_crop: float, split: float, local_crops: int) -> List[Augment]:
    """The views of a multi-crop method: 2 global crops, then `local_crops` local ones."""
    if not min_crop < split < 1:
        raise ValueError(f"multi-crop needs --min-crop ({min_crop}) < the global/local crop split ({split}) < 1")
    return ([Augment(image_size, scale=(split, 1.0))] * 2 +
            [Augment(local_size(image_size), scale=(min_crop, split))] * local_crops)


def check_local_crops(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"local_crops must be an int >= 0, got {n!r}")
    return n


def encode(net: nn.Module, views) -> torch.Tensor:
    """net over every view, one pass per run of same-size views (the global crops together,
    the local crops together), outputs concatenated in view order."""
    out, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        out.append(net(torch.cat(views[start:end], 0)))
        start = end
    return torch.cat(out, 0)
