"""Checkpoints: written atomically (a crash leaves the previous one intact), read with
torch.load(weights_only=True) (tensors, numbers, strings, lists and dicts only)."""
from __future__ import annotations

import os

import torch


def save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file, flushed to disk, then renamed over `path`; the
    temporary file is removed if anything fails (Ctrl-C included)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(path: str, **state) -> None:
    save_atomic(state, path)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated files, foreign pickles
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
