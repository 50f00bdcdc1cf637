"""Checkpoints: written atomically (a crash leaves the previous one intact), read with
torch.load(weights_only=True) (tensors, numbers, strings, lists and dicts only)."""
from __future__ import annotations

import os

import torch


def save_checkpoint(path: str, **state) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated files, foreign pickles
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
