"""Self-supervised pretraining: the small-image fast path (uint8 images resident on the
training device, whole batches augmented with tensor operations; images up to 96 px) or
DataLoader workers with torchvision.transforms.v2 (larger images), DDP under torchrun,
bf16 autocast, warm-up + cosine learning rate, SGD (or LARS, AdamW), per-epoch atomic checkpoints
and exact resume.

Every random draw derives from (seed, epoch, step): the data order from a generator seeded
per epoch, each batch's augmentation from one seeded per step. So a resumed run repeats the
uninterrupted one exactly, and a DDP run (each rank draws the whole global batch's
augmentation and keeps its slice) computes what one process with the same global batch
computes. (With workers, each rank's workers draw its own augmentations: runs repeat for
the same seed, ranks and workers.)

`pretrain(cfg, until=S)` stops after step S of the schedule with a checkpoint there; the
resume may train on other data from S on, with the same optimizer, method state and
learning-rate schedule (`simcore run --resample`)."""
from __future__ import annotations

import csv
import json
import math
import numbers
import os
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .augment import augment
from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_images
from .large_images import ImageFiles, default_workers, loader, view_transform
from .global_bn import convert_batchnorm
from .methods import VIT_ONLY, build_method, method_views
from .models import build_backbone, parse_arch
from .optim import LARS, lr_at

SMALL_IMAGES = 96  # the tensor fast path: images up to this size
SEED_MAX = 2**32 - 1  # generators are seeded with seed * 1_000_003 + step, within 64 bits


@dataclass
class TrainConfig:
    data: List[str]
    out: str
    method: str = "simclr"
    arch: str = "resnet18"
    epochs: int = 100
    steps: Optional[int] = None  # total optimizer steps: overrides epochs (the last epoch is cut short)
    batch_size: int = 256  # global, over all ranks
    lr: Optional[float] = None  # default: base_lr * batch_size / 256
    base_lr: float = 0.06
    weight_decay: float = 5e-4
    momentum: float = 0.9
    optimizer: str = "sgd"  # or "lars", "adamw"
    warmup_epochs: int = 10
    warmup_steps: Optional[int] = None  # overrides warmup_epochs (runs of a fixed step count)
    image_size: int = 32
    min_crop: float = 0.08  # smallest random-resized-crop area (a fraction of the image)
    seed: int = 0
    amp: str = "auto"  # "auto" (bf16 where the GPU or CPU computes it natively), "bf16" or "off"
    channels_last: bool = True
    compile: bool = False
    skip_bad_images: bool = False
    workers: int = -1  # DataLoader workers for images > 96 px (-1: the cores per rank - 1, at most 8)
    tensorboard: bool = False  # also log the metrics to RUN_DIR/tensorboard
    cache_dir: Optional[str] = None
    method_options: dict = field(default_factory=dict)

    def check(self) -> "TrainConfig":
        if not self.data:
            raise ValueError("give at least one --data")
        parse_arch(self.arch)
        for name in ("epochs", "batch_size", "image_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        parse_arch(self.arch, self.image_size)  # a ViT's patch must divide the images
        if self.method in VIT_ONLY and not parse_arch(self.arch)[0].startswith("vit_"):
            raise ValueError(f"{self.method} needs a ViT backbone (--arch vit_tiny, vit_small or vit_base), "
                             f"got {self.arch!r}")
        if self.image_size > 1024:
            raise ValueError(f"image_size must be at most 1024, got {self.image_size}")
        from .methods import METHODS
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: expected one of {', '.join(sorted(METHODS))}")
        import inspect
        params = inspect.signature(METHODS[self.method].__init__).parameters
        accepted = set(params) - {"self", "backbone"}
        unknown = sorted(set(self.method_options) - accepted)
        if unknown:
            raise ValueError(f"{self.method} has no option {', '.join(unknown)} (it takes "
                             f"{', '.join(sorted(accepted))})")
        if not 0 < self.min_crop <= 1:
            raise ValueError(f"min_crop must be in (0, 1], got {self.min_crop}")
        if "crop_split" in params:  # multi-crop (SwAV, DINO): local crops span [min_crop, crop_split]
            split = self.method_options.get("crop_split", params["crop_split"].default)
            if isinstance(split, bool) or not isinstance(split, numbers.Real) or not math.isfinite(split):
                raise ValueError(f"crop_split must be a number in (min_crop, 1), got {split!r}")
            if not self.min_crop < split < 1:
                fix = ("lower --min-crop" if "crop_split" not in self.method_options
                       else "lower --min-crop or choose crop_split between it and 1")
                raise ValueError(f"{self.method}'s multi-crop needs --min-crop ({self.min_crop}) < the global/local "
                                 f"crop split ({split}) < 1: {fix}")
        if self.optimizer not in ("sgd", "lars", "adamw"):
            raise ValueError(f"optimizer must be sgd, lars or adamw, got {self.optimizer!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be auto, bf16 or off, got {self.amp!r}")
        if self.steps is not None and not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be a positive int or None, got {self.steps!r}")
        if self.warmup_steps is not None and not (isinstance(self.warmup_steps, int) and
                                                  0 <= self.warmup_steps <= (self.steps or self.warmup_steps)):
            raise ValueError(f"warmup_steps must be an int in [0, steps], got {self.warmup_steps!r}")
        if self.warmup_epochs < 0 or (self.steps is None and self.warmup_epochs > self.epochs):
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        # numbers that would only fail epochs later (a NaN loss) or deep inside torch
        for name, low in (("lr", 0), ("base_lr", 0), ("weight_decay", None), ("momentum", None)):
            x = getattr(self, name)
            if x is not None and (isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x)
                                  or x < 0 or (low is not None and x <= low)):
                raise ValueError(f"{name} must be a finite number {'> 0' if low is not None else '>= 0'}, got {x!r}")
        t = self.method_options.get("temperature")
        if t is not None and (isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t <= 0):
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        q = self.method_options.get("queue_size")
        low = 0 if self.method == "swav" else 1  # SwAV: 0 turns its queue off
        if q is not None and (isinstance(q, bool) or not isinstance(q, numbers.Integral) or q < low):
            raise ValueError(f"queue_size must be an int >= {low}, got {q!r}")
        c = self.method_options.get("local_crops")
        if c is not None and (isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0):
            raise ValueError(f"local_crops must be an int >= 0, got {c!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be an int in [0, {SEED_MAX}], got {self.seed!r}")
        from .data import check_cache_dir
        check_cache_dir(self.cache_dir)
        return self

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (avx512_bf16 or AMX): bf16 autocast then halves a CPU step."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast_dtype(amp: str, device: torch.device):
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":  # native bf16 from Ampere (8.0) on; older GPUs only emulate it
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else None
    return torch.bfloat16 if _cpu_has_bf16() else None


_started_group = False  # this module created the process group (and ends it)


def init_distributed() -> None:
    """Joins the torchrun process group (nccl on GPUs, gloo on CPUs) when launched by it."""
    global _started_group
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        _started_group = True


def build(cfg: TrainConfig, device: torch.device):
    """The method (backbone + heads) for a config, on `device`."""
    torch.manual_seed(cfg.seed)  # the initial weights
    backbone = build_backbone(cfg.arch, small_images=cfg.image_size <= SMALL_IMAGES, image_size=cfg.image_size)
    method = build_method(cfg.method, backbone, **cfg.method_options)
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method.to(device)


def _write_json_atomic(obj, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


class _Metrics:
    """metrics.csv: one row per finished epoch; rows past a resumed epoch are dropped."""

    FIELDS = ["epoch", "loss", "lr", "seconds", "images_per_s"]

    def __init__(self, path: str, resume_epoch: int):
        rows = []
        if resume_epoch > 0 and os.path.exists(path):
            with open(path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
        self.path, self.rows = path, rows
        self._flush()

    def add(self, **row):
        self.rows.append({k: row[k] for k in self.FIELDS})
        self._flush()

    def _flush(self):
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)


def pretrain(cfg: TrainConfig, resume: bool = False, progress: bool = True,
             until: Optional[int] = None) -> List[float]:
    """Trains cfg.method on cfg.data into cfg.out; returns the mean loss of every epoch
    run by this call.

    until: stop after this global step of the schedule (default: its end), its epoch cut
    short there and checkpointed. A later call with resume=True continues the same schedule
    (optimizer, method state, learning rate over all the steps) and may train on other data
    from that step on: a segment of data begins where a call stopped at `until`, and its
    epochs count from there (`simcore run --resample` re-selects its coreset so). A resume
    mid-segment must keep the segment's data."""
    cfg.check()
    if cfg.tensorboard:
        _board_writer()  # fail before any work if the package is missing
    init_distributed()
    rank, world = _world()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world} ranks")
    device = _device()
    ckpt_path = os.path.join(cfg.out, "checkpoint.pt")
    if not resume and os.path.exists(ckpt_path):
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or choose "
                              "another --out")
    state = _resume_state(ckpt_path, cfg) if resume else None  # checked before any work
    method = build(cfg, device)  # before the data: the method says which views it trains on
    augs = method_views(method, cfg.image_size, cfg.min_crop)
    draw_noise = getattr(method, "noise", None)
    if state is not None and rank == 0:
        from .checkpoint import remove_temporaries
        remove_temporaries(cfg.out)  # a killed epoch's half-written checkpoint, metrics, config
    large = cfg.image_size > SMALL_IMAGES
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and local_rank != 0:
        dist.barrier()  # local rank 0 downloads and decodes first; the others read its cache
    if large:  # decoded by workers, batch by batch
        files = torch.utils.data.ConcatDataset([
            ImageFiles(s, cache_dir=cfg.cache_dir, skip_bad=cfg.skip_bad_images)
            .with_transform([view_transform(a) for a in augs]) for s in cfg.data])
        n = len(files)
    else:  # decoded once, resident on the device
        images = torch.cat([load_images(s, cfg.image_size, cache_dir=cfg.cache_dir, skip_bad=cfg.skip_bad_images,
                                        progress=progress and rank == 0).images for s in cfg.data])
        n = images.shape[0]
    if world > 1 and local_rank == 0:
        dist.barrier()
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n} training images")
    total_steps = cfg.steps or cfg.epochs * steps_per_epoch
    stop = total_steps if until is None else until
    if isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= total_steps:
        raise ValueError(f"until must be a step in [1, {total_steps}], got {until!r}")
    warmup_steps = min(total_steps, cfg.warmup_steps if cfg.warmup_steps is not None
                       else cfg.warmup_epochs * steps_per_epoch)
    if not large:
        images = images.to(device)
    workers = cfg.workers if cfg.workers >= 0 else default_workers()

    if world > 1 and device.type == "cpu":
        method = convert_batchnorm(method)
    elif world > 1:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    params = [p for p in method.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":  # MAE's and DINO's choice for ViTs (betas as MAE's); as theirs,
        # no weight decay on biases and norm parameters (the 1-D ones)
        groups = [dict(params=[p for p in params if p.dim() > 1]),
                  dict(params=[p for p in params if p.dim() <= 1], weight_decay=0.0)]
        opt = torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    else:
        opt_cls = LARS if cfg.optimizer == "lars" else torch.optim.SGD
        opt = opt_cls(params, lr=cfg.peak_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    start_epoch, begin, begin_epoch = 0, 0, 0  # this data's segment begins at (begin, begin_epoch)
    if state is not None:
        try:
            method.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"])
            done = int(state.get("step", min(start_epoch * steps_per_epoch, total_steps)))  # older: no "step"
            begin, begin_epoch = int(state.get("begin_step", 0)), int(state.get("begin_epoch", 0))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"--resume: {ckpt_path} does not fit its configuration ({first})") from None
        if done > stop:
            raise ValueError(f"--resume: {ckpt_path} is at step {done}, past until={stop}")
        if _segment_ended(state):
            begin, begin_epoch = done, start_epoch
    epochs = begin_epoch + -(-(stop - begin) // steps_per_epoch)  # the last epoch of this call
    if rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
        # the schedule as run (images counted after --skip-bad-images): `simcore run` matches it
        _write_json_atomic(dict(asdict(cfg), world_size=world, device=str(device), images=n,
                                total_steps=total_steps, resolved_warmup_steps=warmup_steps),
                           os.path.join(cfg.out, "config.json"))
        queue = method.queue if cfg.method == "moco" else None  # its own keys must not be its negatives
        if queue is not None and queue.shape[0] >= n:
            tqdm.write(f"simcore: warning: MoCo's queue holds {queue.shape[0]} keys and there are {n} "
                       f"training images, so an image's own earlier keys become its negatives; "
                       f"pass --queue-size below {n}")
    metrics = _Metrics(os.path.join(cfg.out, "metrics.csv"), start_epoch) if rank == 0 else None
    board = _board(cfg) if rank == 0 and cfg.tensorboard else None
    model = method
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if cfg.compile else model
    amp_dtype = _autocast_dtype(cfg.amp, device)
    per_rank = cfg.batch_size // world
    losses = []
    for epoch in range(start_epoch, epochs):
        first = begin + (epoch - begin_epoch) * steps_per_epoch  # this epoch's first global step
        epoch_steps = min(steps_per_epoch, stop - first)
        method.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        total = torch.zeros((), device=device)
        bar = tqdm(range(epoch_steps), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not progress or rank != 0)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        if large:
            batches = [order[s * cfg.batch_size:(s + 1) * cfg.batch_size][mine].tolist()
                       for s in range(epoch_steps)]
            views = iter(loader(files, batches, workers, cfg.seed * 100003 + epoch * 1009 + rank,
                                pin=device.type == "cuda"))
        for step in bar:
            global_step = first + step
            for group in opt.param_groups:
                group["lr"] = lr_at(global_step, total_steps, cfg.peak_lr,
                                    warmup_steps)
            seed = cfg.seed * 1_000_003 + global_step
            if large:
                inputs = [v.to(device, non_blocking=True) for v in next(views)]
                g = torch.Generator().manual_seed(seed)  # for the noise, drawn here on the CPU
            else:
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size].to(device)
                batch = images[idx]
                g = torch.Generator(device=device).manual_seed(seed)
                inputs = [augment(batch, a, g)[mine] for a in augs]
            if cfg.channels_last:
                inputs = [v.contiguous(memory_format=torch.channels_last) for v in inputs]
            if draw_noise is not None:  # the global batch's, sliced like the views
                inputs.append(draw_noise(cfg.batch_size, g, g.device)[mine].to(device))
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = forward(*inputs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step((global_step + 1) / total_steps)
            total += loss.detach()
        mean_loss = total / epoch_steps
        if world > 1:
            dist.all_reduce(mean_loss)
            mean_loss /= world
        mean_loss = float(mean_loss)
        losses.append(mean_loss)
        seconds = time.perf_counter() - t0
        if rank == 0:  # metrics first: a resume drops rows past its checkpoint's epoch
            metrics.add(epoch=epoch + 1, loss=f"{mean_loss:.6f}", lr=f"{opt.param_groups[0]['lr']:.6g}",
                        seconds=f"{seconds:.2f}", images_per_s=f"{epoch_steps * cfg.batch_size / seconds:.1f}")
            save_checkpoint(ckpt_path, model=method.state_dict(), optimizer=opt.state_dict(),
                            epoch=epoch + 1, step=first + epoch_steps, until=stop if stop < total_steps else None,
                            begin_step=begin, begin_epoch=begin_epoch, config=_comparable(cfg))
            if board is not None:
                for name, value in (("loss", mean_loss), ("lr", opt.param_groups[0]["lr"]),
                                    ("images_per_s", epoch_steps * cfg.batch_size / seconds)):
                    board.add_scalar(f"pretrain/{name}", value, epoch + 1)
                board.flush()
            if progress:
                tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {mean_loss:.4f}, {seconds:.1f} s")
        if world > 1:
            dist.barrier()
    if board is not None:
        board.close()
    if world > 1 and _started_group:
        dist.destroy_process_group()
    return losses


def _board_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard "
                         "(or the project's [tensorboard] extra)") from None
    return SummaryWriter


def _board(cfg: TrainConfig):
    return _board_writer()(os.path.join(cfg.out, "tensorboard"))


def _comparable(cfg: TrainConfig) -> dict:
    """The config fields that must match for a resume: not the run's bookkeeping, nor the
    speed-only switches; folder paths made absolute."""
    d = asdict(cfg)
    for key in ("cache_dir", "workers", "tensorboard", "compile", "channels_last"):
        d.pop(key)
    d["data"] = [s if s.startswith("torchvision:") else os.path.abspath(s) for s in cfg.data]
    d["out"] = os.path.abspath(cfg.out)
    return d


def _resume_state(ckpt_path: str, cfg: TrainConfig) -> dict:
    if not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    state = load_checkpoint(ckpt_path)
    saved, now = state.get("config", {}), _comparable(cfg)
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k)
                    and not (k == "data" and _segment_ended(state)))
    if differ:
        detail = ", ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in differ)
        raise ValueError(f"--resume: {ckpt_path} was written with another configuration ({detail})")
    return state


def _segment_ended(state: dict) -> bool:
    """The checkpoint is where its call was told to stop short of the schedule's end
    (`until`): new data may begin there."""
    return state.get("until") is not None and state.get("step") == state["until"]
