"""Image datasets for the small-image fast path: an ImageFolder tree, a list file of image
paths or a torchvision named dataset, decoded once into a uint8 tensor [N, 3, S, S] and
cached on disk.

    s = load_images("data/dogs/train", size=32)            # ImageFolder (any depth)
    s = load_images("run/select/coreset.txt", size=32)      # one image path per line (unlabelled)
    s = load_images("torchvision:cifar10:test", size=32)    # downloads if needed
    s.images, s.labels, s.classes, s.paths                  # uint8 [N, 3, 32, 32], ...

The cache file is keyed by the dataset's path, the image size, and every image file's
name, size and mtime, so an edited folder is decoded again. Unreadable images raise a
ValueError naming the file, or are skipped and counted with skip_bad=True."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm.auto import tqdm

from .leftovers import writer_gone

log = logging.getLogger("simcore")


class DatasetUnavailable(RuntimeError):
    """A named dataset could not be downloaded or opened (network, archive, checksum)."""

# name -> (torchvision class name, how the split is passed, default split, allowed splits)
TORCHVISION = {
    "cifar10": ("CIFAR10", "train", "train", ("train", "test")),
    "cifar100": ("CIFAR100", "train", "train", ("train", "test")),
    "stl10": ("STL10", "split", "train", ("train", "test", "unlabeled", "train+unlabeled")),
    "oxford-pets": ("OxfordIIITPet", "split", "trainval", ("trainval", "test")),
    "flowers102": ("Flowers102", "split", "train", ("train", "val", "test")),
    "fgvc-aircraft": ("FGVCAircraft", "split", "trainval", ("train", "val", "trainval", "test")),
    "dtd": ("DTD", "split", "train", ("train", "val", "test")),
    "food101": ("Food101", "split", "train", ("train", "test")),
}


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # int64 [N] (-1 where unknown)
    classes: List[str]
    paths: List[str]  # one per image: its file, or "name:split:index"

    def __len__(self) -> int:
        return self.images.shape[0]


def parse_spec(spec: str) -> Tuple[str, str, Optional[str]]:
    """'PATH' -> ('folder', PATH, None); 'LIST.txt' -> ('list', LIST.txt, None);
    'torchvision:NAME[:SPLIT]' -> ('torchvision', NAME, SPLIT)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a dataset must be a folder path, a .txt list of image paths or "
                         f"torchvision:NAME[:split], got {spec!r}")
    if not spec.startswith("torchvision:"):
        return ("list" if spec.lower().endswith(".txt") else "folder"), spec, None
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[1] not in TORCHVISION:
        raise ValueError(f"unknown dataset {spec!r}: expected torchvision:NAME[:split] with NAME one of "
                         f"{', '.join(TORCHVISION)}")
    _, _, default, allowed = TORCHVISION[parts[1]]
    split = parts[2] if len(parts) == 3 else default
    if split not in allowed:
        raise ValueError(f"{parts[1]} has no split {split!r}: expected one of {', '.join(allowed)}")
    return "torchvision", parts[1], split


def _list_folder(root: str) -> Tuple[List[Tuple[str, int]], List[str]]:
    """(absolute file path, class index) pairs of an ImageFolder tree (images at any depth
    below each class folder), sorted; the class names."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such dataset folder: {root}")
    root = os.path.abspath(root)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class folders (expected ROOT/<class>/<image files>)")
    items = []
    for c, name in enumerate(classes):
        for dirpath, dirnames, files in os.walk(os.path.join(root, name), followlinks=True):
            here = os.path.realpath(dirpath)  # a link back up the tree would repeat it ~40 times
            dirnames[:] = [d for d in sorted(dirnames)
                           if not (here + os.sep).startswith(os.path.realpath(os.path.join(dirpath, d)) + os.sep)]
            items += [(os.path.join(dirpath, f), c) for f in sorted(files)
                      if f.lower().endswith(IMG_EXTENSIONS)]
    if not items:
        raise ValueError(f"{root} holds no images ({', '.join(IMG_EXTENSIONS)})")
    for path, _ in items:
        check_listable(path)
    return items, classes


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines() splits at each


def check_listable(path: str) -> None:
    """Image paths are stored one per line (FEATS.paths.txt, coreset.txt): a name with a
    line break or bytes that are not UTF-8 would shift or break every later row."""
    if any(c in path for c in _LINE_BREAKS):
        raise ValueError(f"image file name with a line break: {path!r}; rename it (image paths are "
                         "listed one per line)")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"image file name that is not UTF-8: {path!r}; rename it") from None


def _list_file(path: str) -> Tuple[List[Tuple[str, int]], List[str]]:
    """(file, -1) pairs of a list file: one image path per line, relative to the list's
    folder unless absolute; blank lines ignored. Unlabelled: no classes."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such image list: {path}")
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path) as f:
            files = [line.rstrip("\r\n") for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text list of image paths ({e})") from None
    if not files:
        raise ValueError(f"{path} lists no images")
    items = [(p if os.path.isabs(p) else os.path.join(base, p), -1) for p in files]
    missing = next((p for p, _ in items if not os.path.isfile(p)), None)
    if missing is not None:
        raise FileNotFoundError(f"{path} lists a missing image: {missing}")
    return items, []


def list_items(kind: str, name: str) -> Tuple[List[Tuple[str, int]], List[str]]:
    """(file, label) pairs and class names of a 'folder' or 'list' dataset."""
    return _list_folder(name) if kind == "folder" else _list_file(name)


def _to_uint8(img: Image.Image, size: int) -> np.ndarray:
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _decode(items, size: int, skip_bad: bool, open_image: Callable, desc: str, progress: bool = True):
    images, labels, paths, bad = [], [], [], 0
    for path, label in tqdm(items, desc=desc, unit="img", leave=False, disable=not progress):
        try:
            with open_image(path) as img:
                images.append(_to_uint8(img, size))
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds
            if not skip_bad:
                raise ValueError(f"cannot read image {path}: {e} (--skip-bad-images skips such files)") from None
            bad += 1
            continue
        labels.append(label)
        paths.append(path)
    if bad:
        log.warning("skipped %d unreadable image(s) of %d", bad, len(items))
    if not images:
        raise ValueError(f"{desc}: no readable images")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), paths


def file_stamp(path: str) -> Tuple[int, int]:
    """(size, mtime_ns) of an image file; (-1, -1) for a dangling link, which the decode
    then reports (or skips) as an unreadable image."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def _cache_key(root: str, size: int, items) -> str:
    h = hashlib.sha1(f"{os.path.abspath(root)}|{size}".encode())
    for path, label in items:
        st_size, st_mtime_ns = file_stamp(path)
        h.update(f"|{os.path.relpath(path, root)}|{label}|{st_size}|{st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _save_atomic(obj: Dict, path: str) -> None:
    from .checkpoint import save_atomic
    _remove_dead_temporaries(os.path.dirname(path))
    save_atomic(obj, path)


def _remove_dead_temporaries(folder: str, min_age_s: float = 3600) -> None:
    """The cache is shared by concurrent runs: only temporaries (.tmp-PID-*) whose writer
    is gone from this machine and that are an hour old go (a killed decode's leftover)."""
    if not os.path.isdir(folder):
        return
    now = time.time()
    for entry in os.scandir(folder):
        m = re.match(r"\.tmp-(\d+)-", entry.name)
        if not m or not writer_gone(int(m.group(1))):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime > min_age_s:
                os.unlink(entry.path)
        except FileNotFoundError:  # another run cleaned it first
            pass


def default_cache_dir() -> str:
    return os.environ.get("SIMCORE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "simcore"))


def check_cache_dir(cache_dir: Optional[str]) -> None:
    """The cache folder may not exist yet, but no file may stand where it (or a folder
    above it) would be."""
    path = os.path.abspath(cache_dir or default_cache_dir())
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ValueError(f"--cache-dir {cache_dir or default_cache_dir()}: {path} is a file, not a folder")


def _read_cache(path: str, size: int) -> Optional[Dict]:
    """A cache entry, or None if it is missing or does not load as one (a damaged entry is
    a miss: decoded again and rewritten)."""
    if not os.path.exists(path):
        return None
    try:
        d = torch.load(path, weights_only=True)
        n = d["images"].shape[0]
        ok = (d["images"].dtype == torch.uint8 and tuple(d["images"].shape[1:]) == (3, size, size)
              and d["labels"].dtype == torch.int64 and tuple(d["labels"].shape) == (n,)
              and len(d["paths"]) == n and all(isinstance(p, str) for p in d["paths"])
              and all(isinstance(c, str) for c in d["classes"]))
    except Exception:  # noqa: BLE001 - truncated files, foreign content, anything
        ok = False
    if not ok:
        log.warning("image cache %s is damaged: decoding again", path)
        return None
    return d


def load_images(spec: str, size: int, *, cache_dir: Optional[str] = None, skip_bad: bool = False,
                download_root: Optional[str] = None, progress: bool = True) -> ImageSet:
    """Decodes a dataset into uint8 [N, 3, size, size] (cached; see the module docstring).
    download_root: where torchvision datasets are stored (default: <cache_dir>/torchvision)."""
    if not (isinstance(size, int) and size >= 1):
        raise ValueError(f"size must be a positive int, got {size!r}")
    kind, name, split = parse_spec(spec)
    check_cache_dir(cache_dir)
    cache_dir = cache_dir or default_cache_dir()
    if kind in ("folder", "list"):
        items, classes = list_items(kind, name)
        key = _cache_key(name if kind == "folder" else os.path.dirname(os.path.abspath(name)), size, items)
        cache = os.path.join(cache_dir, "images", f"{os.path.basename(os.path.normpath(name))}-{size}px-{key}.pt")
        d = _read_cache(cache, size)
        # an entry that skipped unreadable files serves only runs that skip them too: without
        # skip_bad the decode below stops at the first such file, as with no cache
        if d is not None and (skip_bad or len(d["paths"]) == len(items)):
            paths = list(d["paths"])
            if len(paths) == len(items):  # the files as listed now (absolute), whoever decoded them
                paths = [p for p, _ in items]
            elif paths:
                log.warning("skipped %d unreadable image(s) of %d", len(items) - len(paths), len(items))
            if all(os.path.isabs(p) for p in paths):
                return ImageSet(d["images"], d["labels"], list(d["classes"]), paths)
        images, labels, paths = _decode(items, size, skip_bad, Image.open, f"decoding {name}", progress)
        _save_atomic(dict(images=images, labels=labels, classes=classes, paths=paths), cache)
        return ImageSet(images, labels, classes, paths)
    return _load_torchvision(name, split, size, cache_dir, skip_bad, download_root, progress)


def _load_torchvision(name: str, split: str, size: int, cache_dir: str, skip_bad: bool,
                      download_root: Optional[str], progress: bool = True) -> ImageSet:
    cache = os.path.join(cache_dir, "images", f"torchvision-{name}-{split}-{size}px.pt")
    d = _read_cache(cache, size)
    if d is not None:
        return ImageSet(d["images"], d["labels"], list(d["classes"]), list(d["paths"]))
    import torchvision.datasets as tvd
    cls_name, how, _, _ = TORCHVISION[name]
    root = download_root or os.path.join(cache_dir, "torchvision")
    kwargs = {"train": split == "train"} if how == "train" else {"split": split}
    try:
        ds = getattr(tvd, cls_name)(root=root, download=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - network errors, missing archives, checksums
        raise DatasetUnavailable(f"cannot load torchvision:{name}:{split} into {root}: {e}") from e
    classes = [str(c) for c in getattr(ds, "classes", [])]

    refs = [f"{name}:{split}:{i}" for i in range(len(ds))]
    seen_labels: Dict[str, int] = {}

    def open_image(ref):
        img, y = ds[int(ref.rsplit(":", 1)[1])]
        seen_labels[ref] = -1 if y is None else int(y)
        return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))

    images, _, paths = _decode([(r, -1) for r in refs], size, skip_bad, open_image,
                               f"decoding {name}:{split}", progress)
    labels = torch.tensor([seen_labels[p] for p in paths], dtype=torch.int64)
    _save_atomic(dict(images=images, labels=labels, classes=classes, paths=paths), cache)
    return ImageSet(images, labels, classes, paths)
