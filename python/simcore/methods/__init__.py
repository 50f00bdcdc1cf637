"""Self-supervised methods by name. A method is one file holding one nn.Module with:

    loss = method(view1, view2)      # the training loss of a batch of two augmented views
    method.after_step(progress)      # after each optimizer step; progress in [0, 1]
    method.backbone                  # the encoder whose features are extracted

Add SwAV, DINO or MAE as one file each and one line in METHODS (and in cli.METHOD_NAMES,
which --help lists without importing torch)."""
from __future__ import annotations

from torch import nn

from .byol import BYOL
from .moco import MoCo
from .simclr import SimCLR
from .simsiam import SimSiam

METHODS = {"simclr": SimCLR, "byol": BYOL, "simsiam": SimSiam, "moco": MoCo}  # moco: MoCo v2


def build_method(name: str, backbone: nn.Module, **options) -> nn.Module:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(sorted(METHODS))}")
    return METHODS[name](backbone, **options)


__all__ = ["METHODS", "build_method", "SimCLR", "BYOL", "SimSiam", "MoCo"]
