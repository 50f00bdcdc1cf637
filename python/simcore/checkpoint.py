"""Checkpoints: written atomically (a crash leaves the previous one intact), read with
torch.load(weights_only=True) (tensors, numbers, strings, lists and dicts only)."""
from __future__ import annotations

import os

import torch


def save_atomic(obj, path: str) -> None:
    """torch.save through simcore_ext's atomic_write: a temporary file, flushed to disk,
    renamed over `path`, removed if anything fails (Ctrl-C included)."""
    from simcore_ext.result import atomic_write
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(path: str, **state) -> None:
    save_atomic(state, path)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated files, foreign pickles
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
