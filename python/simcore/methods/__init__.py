"""Self-supervised methods by name. A method is one file holding one nn.Module with:

    loss = method(*views)            # the training loss of a batch: its augmented views, then
                                     # its noise when the method draws some (MAE's masking)
    method.after_step(progress)      # after each optimizer step; progress in [0, 1]
    method.backbone                  # the encoder whose features are extracted

and optionally
    method.views(image_size, min_crop)   # the views it trains on, one augment.Augment each
                                         # (default: two SimCLR views at the training size)
    method.noise(batch, generator, device)  # extra random input, drawn by the trainer
                                            # with the step's seeded generator

The trainer draws every view (and noise) for the global batch from the step's generator and
each rank keeps its slice, so resumes and DDP repeat one process. A new method is one file
and one line in METHODS (and in cli.METHOD_NAMES, which --help lists without importing
torch)."""
from __future__ import annotations

from torch import nn

from ..augment import Augment
from .byol import BYOL
from .dino import DINO
from .mae import MAE
from .moco import MoCo
from .simclr import SimCLR
from .simsiam import SimSiam
from .swav import SwAV

METHODS = {"simclr": SimCLR, "byol": BYOL, "simsiam": SimSiam, "moco": MoCo,  # moco: MoCo v2
           "swav": SwAV, "dino": DINO, "mae": MAE}
VIT_ONLY = {"mae"}


def build_method(name: str, backbone: nn.Module, **options) -> nn.Module:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(sorted(METHODS))}")
    return METHODS[name](backbone, **options)


def method_views(method: nn.Module, image_size: int, min_crop: float):
    """The augmentations of the views `method` trains on, in the order it takes them."""
    own = getattr(method, "views", None)
    return own(image_size, min_crop) if own is not None else [Augment(image_size, scale=(min_crop, 1.0))] * 2


__all__ = ["METHODS", "VIT_ONLY", "build_method", "method_views", "SimCLR", "BYOL", "SimSiam", "MoCo",
           "SwAV", "DINO", "MAE"]
