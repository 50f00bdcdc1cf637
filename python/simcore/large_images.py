"""Images larger than the tensor fast path (> 96 px): decoded by DataLoader workers and
transformed with torchvision.transforms.v2 (the SimCLR recipe for training; resize and
centre crop for features). Same datasets as data.py: ImageFolder trees and
torchvision:NAME[:split]."""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .augment import MEAN, STD, Augment
from .data import TORCHVISION, DatasetUnavailable, default_cache_dir, list_items, parse_spec

log = logging.getLogger("simcore")


class ImageFiles(Dataset):
    """Image i of a dataset as a uint8 CHW tensor, through `transform`; `views` > 1
    returns that many independently transformed copies."""

    def __init__(self, spec: str, *, cache_dir: Optional[str] = None, skip_bad: bool = False,
                 download_root: Optional[str] = None):
        kind, name, split = parse_spec(spec)
        self.spec, self.transform, self.views, self.tv = spec, None, 1, None
        if kind in ("folder", "list"):
            items, self.classes = list_items(kind, name)
            if skip_bad:  # one full decode per file, before any worker starts
                good = [it for it in items if _readable(it[0])]
                if len(good) < len(items):
                    log.warning("skipped %d unreadable image(s) of %d", len(items) - len(good), len(items))
                items = good
            self.paths = [p for p, _ in items]
            self.labels = torch.tensor([c for _, c in items], dtype=torch.int64)
        else:
            import torchvision.datasets as tvd
            cls_name, how, _, _ = TORCHVISION[name]
            root = download_root or os.path.join(cache_dir or default_cache_dir(), "torchvision")
            kwargs = {"train": split == "train"} if how == "train" else {"split": split}
            try:
                self.tv = getattr(tvd, cls_name)(root=root, download=True, **kwargs)
            except Exception as e:  # noqa: BLE001 - network errors, missing archives, checksums
                raise DatasetUnavailable(f"cannot load {spec} into {root}: {e}") from e
            self.classes = [str(c) for c in getattr(self.tv, "classes", [])]
            self.paths = [f"{name}:{split}:{i}" for i in range(len(self.tv))]
            self.labels = None  # read with the images
        if not self.paths:
            raise ValueError(f"{spec}: no readable images")

    def with_transform(self, transform, views: int = 1) -> "ImageFiles":
        """`transform` may be a list: one view per transform, in order (multi-crop)."""
        self.transform, self.views = transform, views
        return self

    def __len__(self) -> int:
        return len(self.paths)

    def _open(self, i: int) -> Image.Image:
        if self.tv is not None:
            img, _ = self.tv[i]
            return img if isinstance(img, Image.Image) else Image.fromarray(img)
        try:
            with Image.open(self.paths[i]) as img:
                return img.convert("RGB")
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds
            raise ValueError(f"cannot read image {self.paths[i]}: {e} (--skip-bad-images skips such "
                             "files)") from None

    def __getitem__(self, i: int):
        x = v2.functional.to_image(self._open(i).convert("RGB"))
        if isinstance(self.transform, (list, tuple)):
            return tuple(t(x) for t in self.transform)
        if self.views == 1:
            return self.transform(x)
        return tuple(self.transform(x) for _ in range(self.views))

    def label(self, i: int) -> int:
        if self.labels is not None:
            return int(self.labels[i])
        for attr in ("targets", "labels", "_labels"):  # torchvision keeps them here, mostly
            known = getattr(self.tv, attr, None)
            if known is not None and len(known) == len(self):
                return int(known[i])
        _, y = self.tv[i]
        return -1 if y is None else int(y)


def _readable(path: str) -> bool:
    """Decodes the whole image (verify() alone accepts truncated JPEGs)."""
    try:
        with Image.open(path) as img:
            img.convert("RGB")
        return True
    except Exception:  # noqa: BLE001
        return False


def train_transform(size: int, min_crop: float = 0.08):
    """SimCLR's augmentation on one uint8 image tensor."""
    return view_transform(Augment(size, scale=(min_crop, 1.0)))


def view_transform(aug: Augment):
    """The augmentation `aug` (augment.py's batched one) with torchvision's transforms."""
    return v2.Compose([
        v2.RandomResizedCrop(aug.size, scale=aug.scale, ratio=aug.ratio, antialias=True),
        v2.RandomHorizontalFlip(aug.flip_p),
        v2.RandomApply([v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)], p=aug.jitter_p),
        v2.RandomGrayscale(p=aug.gray_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(aug.mean, aug.std),
    ])


def eval_transform(size: int):
    """Resize the short side to size / 0.875, centre-crop `size`, normalise."""
    return v2.Compose([
        v2.Resize(int(round(size / 0.875)), antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


def loader(ds: Dataset, batches: Sequence[List[int]], workers: int, seed: int, pin: bool) -> DataLoader:
    """Batches of given indices, decoded by `workers` processes seeded from `seed` (the
    same seed draws the same augmentations)."""
    g = torch.Generator().manual_seed(seed)
    if workers == 0:
        torch.manual_seed(seed)  # the transforms draw from the global generator then
    return DataLoader(ds, batch_sampler=list(batches), num_workers=workers, pin_memory=pin,
                      generator=g)


def default_workers() -> int:
    """The cores of this machine shared by its ranks, one left for the main process; at most 8."""
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return min(8, max(1, (os.cpu_count() or 2) // max(1, ranks) - 1))
