"""Checkpoints: written atomically (a crash leaves the previous one intact), read with
torch.load(weights_only=True) (tensors, numbers, strings, lists and dicts only)."""
from __future__ import annotations

import os
import re

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
    if os.path.getsize(path) == 0:
        raise ValueError(f"cannot read checkpoint {path}: the file is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated files, foreign pickles
        text = str(e)
        if "Unsupported global" in text:  # torch's advice (weights_only=False) would run it
            raise ValueError(f"checkpoint {path} holds Python code or objects beyond tensors and plain "
                             "data: not loaded (loading it would run that code)") from None
        if "WeightsUnpickler error:" in text:  # past torch's advice: what the unpickler met
            text = text.split("WeightsUnpickler error:", 1)[1]
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        if first.strip("'\"").isdigit():  # torch's legacy reader names a bad magic number, nothing else
            first = "not a PyTorch file"
        raise ValueError(f"cannot read checkpoint {path}: {first}") from None


_TEMPORARY = re.compile(r"^\.tmp-|\.tmp-\d+(\.\w+)?$")  # atomic_write's, and NAME.tmp-PID[.ext]


def remove_temporaries(folder: str) -> None:
    """Deletes the temporary files a killed writer left in `folder` (not below it). Only
    for a folder this process owns (a run stage under the run lock, a resumed pretraining):
    another live writer's temporary would go too."""
    if os.path.isdir(folder):
        for entry in os.scandir(folder):
            if _TEMPORARY.search(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
