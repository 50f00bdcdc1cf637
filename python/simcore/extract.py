"""Backbone features of a dataset into a .npy file, chunk by chunk, resumable: the file
grows as FEATS.npy.partial (with FEATS.npy.progress.json recording the rows done) and is
renamed to FEATS.npy when complete; FEATS.paths.txt maps rows to images."""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .augment import Augment, normalize
from .checkpoint import load_checkpoint
from .data import load_images
from .models import build_backbone

SMALL_IMAGES = 96


def load_backbone(checkpoint: str, device: torch.device):
    """The pretrained backbone of a `simcore pretrain` checkpoint, and the run's config."""
    state = load_checkpoint(checkpoint)
    if "model" not in state or "config" not in state:
        raise ValueError(f"{checkpoint} is not a simcore pretraining checkpoint")
    cfg = state["config"]
    backbone = build_backbone(cfg["arch"], small_images=cfg["image_size"] <= SMALL_IMAGES)
    weights = {k[len("backbone."):]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    backbone.load_state_dict(weights)
    return backbone.to(device).eval(), cfg


def _write_json_atomic(obj, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


@torch.no_grad()
def extract(checkpoint: str, data: str, out: str, dtype: str = "float16", batch_size: int = 512,
            chunk_rows: int = 8192, device: Optional[str] = None, cache_dir: Optional[str] = None,
            skip_bad: bool = False, progress: bool = True) -> str:
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    if not out.endswith(".npy"):
        raise ValueError(f"out must be a .npy path, got {out!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone, cfg = load_backbone(checkpoint, dev)
    images = load_images(data, cfg["image_size"], cache_dir=cache_dir, skip_bad=skip_bad)
    n, dim = len(images), backbone.feature_dim
    partial, marker = out + ".partial", out + ".progress.json"
    st = os.stat(checkpoint)
    job = dict(checkpoint=os.path.abspath(checkpoint), checkpoint_mtime_ns=st.st_mtime_ns,
               checkpoint_size=st.st_size, data=data, n=n, dim=dim, dtype=dtype)
    done = 0
    if os.path.exists(partial) and os.path.exists(marker):
        with open(marker) as f:
            saved = json.load(f)
        if {k: saved.get(k) for k in job} == job:
            done = int(saved["rows_done"])  # resume after the last complete chunk
    if done == 0:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(n, dim)).flush()
        _write_json_atomic(dict(job, rows_done=0), marker)
    feats = np.lib.format.open_memmap(partial, mode="r+")
    aug = Augment(size=cfg["image_size"])
    with tqdm(total=n, initial=done, desc=f"extract {data}", unit="img", disable=not progress) as bar:
        for a in range(done, n, chunk_rows):
            b = min(n, a + chunk_rows)
            for c in range(a, b, batch_size):
                x = normalize(images.images[c:min(b, c + batch_size)].to(dev), aug)
                feats[c:c + x.shape[0]] = backbone(x).float().cpu().numpy().astype(dtype)
            feats.flush()
            _write_json_atomic(dict(job, rows_done=b), marker)
            bar.update(b - a)
    del feats
    paths_tmp = f"{out}.paths.tmp-{os.getpid()}"
    with open(paths_tmp, "w") as f:
        f.writelines(p + "\n" for p in images.paths)
    os.replace(paths_tmp, out[:-4] + ".paths.txt")
    os.replace(partial, out)
    os.remove(marker)
    return out
