"""The `simcore` command line: one subcommand per stage.

    simcore demo                  the whole pipeline on built-in generated images
    simcore run ...               the whole pipeline on your data, stage by stage, resumable
    simcore pretrain ...          self-supervised pretraining (SimCLR, BYOL, SimSiam, MoCo v2)
    simcore extract ...           backbone features of a dataset into a .npy file
    simcore eval knn|linear|finetune ...   kNN, linear-probe or fine-tuning accuracy of a checkpoint
    simcore select ...            select a coreset from feature files (.npy)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys

import numpy as np

from .leftovers import writer_gone


# simcore.methods.METHODS by name (listed here so that --help does not import torch;
# tests/test_cli.py checks the two agree)
METHOD_NAMES = ["simclr", "byol", "simsiam", "moco", "swav", "dino", "mae"]
METHOD_HELP = ("SSL method: simclr, byol, simsiam, moco (MoCo v2), swav, dino (multi-crop), mae (ViTs only; "
               "the paper trains it with --optimizer adamw)")
TEMPERATURE_HELP = ("the method's temperature: SimCLR (default 0.5), MoCo (0.2), SwAV (0.1), "
                    "DINO's student (0.1)")
QUEUE_HELP = ("MoCo: negatives kept in its queue (default 4096; keep it below the number of training images); "
              "SwAV: projections queued for Sinkhorn (default 0: none)")
LOCAL_CROPS_HELP = "SwAV and DINO: small crops per image besides the two global ones (default 6 and 8)"
OPTIMIZER_HELP = "sgd, lars, or adamw (MAE, DINO on ViTs: pass --lr, e.g. 1.5e-4 x batch / 256, and --weight-decay 0.05)"


def method_options(args) -> dict:
    """The --temperature, --queue-size and --local-crops given (the method's defaults otherwise)."""
    given = dict(temperature=args.temperature, queue_size=args.queue_size, local_crops=args.local_crops)
    return {k: v for k, v in given.items() if v is not None}
# simcore.models.ARCH_NAMES, likewise (tests/test_cli.py checks the two agree)
ARCH_NAMES = ["resnet18", "resnet50", "resnet101", "resnext50_32x4d", "efficientnet_b0", "vit_tiny", "vit_small",
              "vit_base"]
ARCH_HELP = ("backbone: " + ", ".join(ARCH_NAMES) + "; the CNNs take a width suffix (resnet18-w0.25: a quarter "
             "as wide); ViT patches are 4 px below 64 px, 8 px below 128 px, else 16 px")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `simcore run: error: ...`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def finite(text: str) -> float:
    """A float option: NaN and infinities would only fail later, deep in a stage."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return x


def parse_budget(text: str):
    """'1%' or '0.01' (a fraction of the open-set) or '5000' (items)."""
    try:
        if text.endswith("%"):
            return finite(text[:-1]) / 100
        return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else finite(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"budget must look like 1%, 0.01 or 5000, got {text!r}")


def parse_tau(text: str):
    if text.lower() == "none":
        return None
    try:
        return finite(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"tau must be a number in (0, 1] or 'none', got {text!r}") from None


def cmd_select(args) -> int:
    from simcore_ext import select_coreset
    from simcore_ext.result import atomic_write

    for p in args.openset_features + [x for x in (args.target_features, args.centroids) if x]:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"no such file: {p}")
    from .pipeline import check_out_folder
    check_out_folder(args.out)  # before the selection, which may take minutes
    if args.whiten:
        from .whiten import check_dim
        check_dim(args.whiten)
        if args.centroids:
            raise ValueError("--whiten needs --target-features: explicit centroids live in the raw feature space")
    target = _load_npy(args.target_features, "--target-features", mmap_mode="r") if args.target_features else None
    centroids = _load_npy(args.centroids, "--centroids") if args.centroids else None
    openset = args.openset_features
    if args.whiten:
        from .whiten import fit_whitening, whiten_file
        for path in openset:  # one-line errors for unreadable files
            _load_npy(path, "--openset-features", mmap_mode="r")
        w = fit_whitening(openset, args.whiten, progress=not args.quiet)
        if target.ndim != 2 or target.shape[1] != w.mean.shape[0]:  # before writing anything
            raise ValueError(f"--target-features {args.target_features}: shape {target.shape}, the open-set's "
                             f"features are {w.mean.shape[0]} wide")
    os.makedirs(args.out, exist_ok=True)
    _remove_dead_whitened(args.out)
    tmp = None
    try:
        if args.whiten:  # whitened copies of U, streamed, in a folder of OUT removed afterwards
            tmp = os.path.join(args.out, f".tmp-{os.getpid()}-whitened")
            os.makedirs(tmp)
            openset = [whiten_file(p, os.path.join(tmp, f"openset_{i}.npy"), w) for i, p in enumerate(openset)]
            target = w.apply(target)
        r = select_coreset(target, openset, k=args.k, centroids=centroids, budget=args.budget,
                           tau=args.tau, patience=args.patience, metric=args.metric, device=args.device,
                           chunk_size=args.chunk_size, seed=args.seed, progress=not args.quiet)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.whiten:
        w.save(os.path.join(args.out, "whitening.npz"))
    elif os.path.exists(os.path.join(args.out, "whitening.npz")):  # an earlier --whiten run's: not this coreset's
        os.remove(os.path.join(args.out, "whitening.npz"))
    r.save(os.path.join(args.out, "coreset.npz"))
    summary = dict(items=len(r), rounds=r.rounds, stop_reason=r.stop_reason, threshold=r.threshold,
                   params=r.params, stats=r.stats, **({"whiten": args.whiten} if args.whiten else {}))
    atomic_write(os.path.join(args.out, "selection.json"), lambda f: json.dump(summary, f, indent=2),
                 binary=False)
    print(f"selected {len(r)} items in {r.rounds} rounds ({r.stop_reason}) in {r.stats['seconds']:.2f} s "
          f"-> {os.path.join(args.out, 'coreset.npz')}")
    return 0


def _remove_dead_whitened(out: str) -> None:
    """Whitened copies a killed `simcore select --whiten` left in OUT (.tmp-PID-whitened),
    when process PID is gone: they are as large as the open-set."""
    for entry in os.scandir(out):
        m = re.fullmatch(r"\.tmp-(\d+)-whitened", entry.name)
        if m and entry.is_dir(follow_symlinks=False) and writer_gone(int(m.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)


def _load_npy(path: str, flag: str, **kw) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False, **kw)
    except Exception as e:  # noqa: BLE001 - empty, truncated or foreign files
        raise ValueError(f"{flag} {path}: cannot read it as a .npy array ({str(e) or type(e).__name__})") from None
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{flag} {path}: not a single .npy array")
    return a


def cmd_pretrain(args) -> int:
    from .train import TrainConfig, pretrain

    options = method_options(args)
    cfg = TrainConfig(data=args.data, out=args.out, method=args.method, arch=args.arch,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, optimizer=args.optimizer,
                      warmup_epochs=min(args.warmup_epochs, args.epochs), image_size=args.image_size,
                      min_crop=args.min_crop, workers=args.workers, tensorboard=args.tensorboard,
                      seed=args.seed, amp=args.amp, compile=args.compile,
                      skip_bad_images=args.skip_bad_images, cache_dir=args.cache_dir,
                      method_options=options)
    losses = pretrain(cfg, resume=args.resume, progress=not args.quiet)
    if losses and int(os.environ.get("RANK", 0)) == 0:
        print(f"pretrained {len(losses)} epoch(s), last loss {losses[-1]:.4f} -> "
              f"{os.path.join(args.out, 'checkpoint.pt')}")
    return 0


def cmd_extract(args) -> int:
    from .encoders import load_encoder
    from .extract import extract

    device = args.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    encoder = load_encoder(f"checkpoint:{args.checkpoint}" if args.checkpoint else args.encoder, args.size, device=device)
    out = extract(encoder, args.data, args.out, dtype=args.dtype, batch_size=args.batch_size,
                  device=args.device, cache_dir=args.cache_dir, skip_bad=args.skip_bad_images,
                  progress=not args.quiet, workers=args.workers, amp=args.amp)
    print(f"features -> {out}")
    return 0


# `simcore eval` defaults per protocol (where the command line gives none)
EVAL_DEFAULTS = {"linear": dict(epochs=100, lr=0.1), "knn": dict(epochs=100, lr=0.1),
                 "finetune": dict(epochs=50, lr=0.05)}


def cmd_eval(args) -> int:
    import torch

    from .extract import FeatureSource, features_of, load_backbone

    # every number before any image is decoded
    for name, value in EVAL_DEFAULTS[args.protocol].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not 0 < args.label_fraction <= 1:
        raise ValueError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 < args.min_crop <= 1:
        raise ValueError(f"--min-crop must be in (0, 1], got {args.min_crop}")
    from .train import SEED_MAX
    if not 0 <= args.seed <= SEED_MAX:
        raise ValueError(f"--seed must be in [0, {SEED_MAX}], got {args.seed}")
    from .data import check_cache_dir
    check_cache_dir(args.cache_dir)
    if args.out is not None and os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a folder: give a file name (RESULT.json)")
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone, cfg = load_backbone(args.checkpoint, dev)
    if args.protocol == "finetune":
        result = _eval_finetune(args, backbone, cfg)
    else:
        from .evaluate import knn, linear_probe
        sets = [FeatureSource(s, cfg["image_size"], args.cache_dir, args.skip_bad_images, args.workers,
                              progress=not args.quiet) for s in (args.train, args.test)]
        _check_classes(sets[0].classes, sets[1].classes, args.train)
        ftr, fte = (features_of(backbone, s) for s in sets)
        ytr, yte = (s.labels() for s in sets)
        if args.protocol == "knn":
            acc = knn(ftr, ytr, fte, yte)
            result = {f"knn_top1_k{k}": v for k, v in acc.items()}
        else:
            acc = linear_probe(ftr, ytr, fte, yte, epochs=args.epochs, seed=args.seed,
                               lr=args.lr, val_fraction=args.val_fraction)
            result = {f"linear_{k}": v for k, v in acc.items()}
    if args.out is not None:
        from simcore_ext.result import atomic_write
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write(args.out, lambda f: json.dump(result, f, indent=2), binary=False)
    print(json.dumps(result))
    return 0


def _check_classes(train, test, train_spec):
    if train != test:
        raise ValueError(f"train and test have different classes: {train} vs {test}")
    if len(train) < 2:
        raise ValueError(f"--train {train_spec} has {len(train)} class(es): accuracy needs at least two")


def _eval_finetune(args, backbone, cfg) -> dict:
    """The whole network fine-tuned on a class-balanced share of --train's labels."""
    from .data import load_images
    from .evaluate import finetune, label_subset
    sets = [load_images(s, cfg["image_size"], cache_dir=args.cache_dir, skip_bad=args.skip_bad_images,
                        progress=not args.quiet) for s in (args.train, args.test)]
    _check_classes(sets[0].classes, sets[1].classes, args.train)
    rows, raised = label_subset(sets[0].labels, args.label_fraction, args.seed)
    if raised:
        names = ", ".join(sets[0].classes[c] for c in raised[:5]) + (", ..." if len(raised) > 5 else "")
        print(f"simcore eval: note: --label-fraction {args.label_fraction:g} leaves {len(raised)} class(es) "
              f"with no image ({names}): rounded up to one image each, {len(rows)} images in all", file=sys.stderr)
    acc = finetune(backbone, sets[0].images[rows], sets[0].labels[rows], sets[1].images, sets[1].labels,
                   epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, min_crop=args.min_crop,
                   seed=args.seed, amp=args.amp, progress=not args.quiet,
                   desc=f"finetune {100 * args.label_fraction:g}% ({len(rows)} images)")
    return {"finetune_top1": acc["top1"], "finetune_mean_per_class": acc["mean_per_class"],
            "label_fraction": args.label_fraction, "labelled_images": len(rows)}


def cmd_demo(args) -> int:
    from .demo import run_demo, run_selection_demo
    from .train import SEED_MAX

    if not 0 <= args.seed <= SEED_MAX:
        raise ValueError(f"--seed must be in [0, {SEED_MAX}], got {args.seed}")
    if args.selection_only:
        return run_selection_demo(out=args.out, seed=args.seed, n_openset=args.openset_size,
                                  progress=not args.quiet)
    return run_demo(out=args.out or "simcore-demo", seed=args.seed, from_stage=args.from_stage,
                    progress=not args.quiet)


def cmd_run(args) -> int:
    from .pipeline import RunConfig, run

    options = method_options(args)
    cfg = RunConfig(target=args.target, openset=args.openset, out=args.out, test=args.test,
                    budget=args.budget, k=args.k, tau=args.tau, patience=args.patience,
                    method=args.method, arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, warmup_epochs=min(args.warmup_epochs, args.epochs),
                    optimizer=args.optimizer, weight_decay=args.weight_decay, min_crop=args.min_crop,
                    image_size=args.image_size, seed=args.seed, compare_random=args.compare_random,
                    openset_groups=args.openset_groups, linear_epochs=args.linear_epochs,
                    finetune=args.finetune, finetune_epochs=args.finetune_epochs,
                    device=args.device, amp=args.amp, workers=args.workers, cache_dir=args.cache_dir,
                    skip_bad_images=args.skip_bad_images, method_options=options,
                    retrieval_encoder=args.retrieval_encoder, retrieval_size=args.retrieval_size,
                    resample=args.resample, whiten=args.whiten, retrieval_amp=args.retrieval_amp)
    run(cfg, from_stage=args.from_stage, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="simcore", description="SimCore: coreset sampling from an open-set "
               "for fine-grained self-supervised learning (CVPR 2023).")
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    from .pipeline import STAGES

    d = sub.add_parser("demo", help="the whole pipeline on built-in generated images (a few minutes)",
                       formatter_class=fmt)
    d.add_argument("--out", default=None, help="run folder (default ./simcore-demo; with "
                   "--selection-only: where to save coreset.npz, default: nowhere)")
    d.add_argument("--seed", type=int, default=0, help="data, training and k-means seed")
    d.add_argument("--from-stage", choices=STAGES, default=None, help="run this stage again even if complete; later stages re-run where its result changed")
    d.add_argument("--selection-only", action="store_true",
                   help="only a selection on generated features (no images, no training; a second)")
    d.add_argument("--openset-size", type=int, default=200_000,
                   help="rows of the generated open-set (--selection-only)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="the whole pipeline: pretrain, extract, centroids, select, retrain, "
                       "eval, report (resumable)", formatter_class=fmt)
    r.add_argument("--target", required=True, help="target X: an ImageFolder tree (its classes label the "
                   "evaluation), a .txt list of images, or torchvision:NAME[:split]")
    r.add_argument("--openset", action="append", required=True, metavar="PATH",
                   help="open-set U: a folder of image folders (ImageFolder layout) or a .txt list of image "
                   "paths; repeat to concatenate")
    r.add_argument("--out", required=True, help="run folder (manifest.json, one folder per stage)")
    r.add_argument("--test", default=None, help="labelled test split of the target (eval stage; "
                   "without it the run stops at the report without accuracies)")
    r.add_argument("--budget", type=parse_budget, default=None,
                   help="items (5000) or a fraction of U (1%%); default 50 x target size")
    r.add_argument("--k", type=int, default=100, help="k-means centroids")
    r.add_argument("--tau", type=parse_tau, default=0.95, help="stop threshold ratio, or 'none'")
    r.add_argument("--patience", type=int, default=20, help="round that fixes the threshold")
    r.add_argument("--method", choices=METHOD_NAMES, default="simclr", help=METHOD_HELP)
    r.add_argument("--arch", default="resnet18", help=ARCH_HELP)
    r.add_argument("--epochs", type=int, default=100, help="pretraining epochs on X; retraining runs "
                   "the same number of optimizer steps")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--lr", type=finite, default=None, help="peak learning rate (default 0.06 x batch / 256)")
    r.add_argument("--warmup-epochs", type=int, default=10)
    r.add_argument("--optimizer", choices=["sgd", "lars", "adamw"], default="sgd", help=OPTIMIZER_HELP)
    r.add_argument("--weight-decay", type=finite, default=5e-4)
    r.add_argument("--min-crop", type=finite, default=0.08, help="smallest random-resized-crop area of the "
                   "SSL views, a fraction of the image, in every SSL training of the run (pretrain, retrain, "
                   "baseline; not --finetune's); swav, dino: of their local crops, so below 0.14 (swav) or 0.4 "
                   "(dino)")
    r.add_argument("--temperature", type=finite, default=None, help=TEMPERATURE_HELP)
    r.add_argument("--queue-size", type=int, default=None, help=QUEUE_HELP)
    r.add_argument("--local-crops", type=int, default=None, help=LOCAL_CROPS_HELP)
    r.add_argument("--image-size", type=int, default=32)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--compare-random", action="store_true",
                   help="also pretrain on X + a random open-set subset of the coreset's size")
    r.add_argument("--openset-groups", default=None, metavar="TSV",
                   help="folder -> group table (columns folder, group) to measure the coreset by; "
                   "never used to select")
    r.add_argument("--retrieval-encoder", default="pretrain", metavar="SPEC",
                   help="the encoder whose features select: pretrain (SSL on X, the paper's), a simcore "
                   "checkpoint (PATH.pt), torchvision:NAME[:WEIGHTS|FILE] (e.g. torchvision:resnet50) or "
                   "efficientnet-lite0|1|2 (offline, the [pretrained] extra); retraining is the same for all")
    r.add_argument("--retrieval-size", type=int, default=None, metavar="PX",
                   help="the retrieval encoder's input size (default: its own; pretrain: --image-size)")
    r.add_argument("--resample", type=int, default=0, metavar="N",
                   help="re-select the coreset N times during retraining with the retraining encoder as it "
                   "is then (the released code's --sampling_times N+1): N+1 equal segments of its steps, "
                   "each after the first on a new coreset; 0: one selection, the paper's")
    r.add_argument("--retrieval-amp", choices=["off", "bf16", "auto"], default="off",
                   help="extract the retrieval features under bfloat16 autocast (channels-last): 2-3.5x faster "
                   "on CPUs with AVX512-BF16/AMX; auto: where the hardware has native bf16; off: float32")
    r.add_argument("--whiten", type=int, default=0, metavar="D",
                   help="PCA-whiten the retrieval features to D dimensions, fitted on the open-set's, before "
                   "k-means and selection (helps pooled ImageNet features: see simcore.whiten); 0: raw, the paper's")
    r.add_argument("--linear-epochs", type=int, default=100)
    r.add_argument("--finetune", type=finite, nargs="+", default=[], metavar="FRACTION",
                   help="also fine-tune every encoder (whole network, new linear head) on these shares of X's "
                   "labels, e.g. 0.1 0.2 0.5 (eval stage; see `simcore eval finetune --help`)")
    r.add_argument("--finetune-epochs", type=int, default=50, help="fine-tuning epochs (with --finetune)")
    r.add_argument("--from-stage", choices=STAGES, default=None,
                   help="run this stage again even if complete; later stages re-run where its result "
                   "changed")
    r.add_argument("--device", default=None, help="device of extraction, selection and evaluation (default: "
                   "CUDA if available; training always uses the GPU when there is one)")
    r.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (counted)")
    r.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    r.add_argument("--workers", type=int, default=-1, help="DataLoader workers for images > 96 px")
    r.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/simcore)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("pretrain", help="self-supervised pretraining into a run folder",
                       formatter_class=fmt)
    t.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="an ImageFolder tree, a .txt list of image paths, or torchvision:NAME[:split]; "
                   "repeat to concatenate")
    t.add_argument("--out", required=True, help="run folder: config.json, metrics.csv, checkpoint.pt")
    t.add_argument("--method", choices=METHOD_NAMES, default="simclr", help=METHOD_HELP)
    t.add_argument("--arch", default="resnet18", help=ARCH_HELP)
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=256, help="global batch (all ranks)")
    t.add_argument("--lr", type=finite, default=None, help="peak learning rate (default 0.06 x batch / 256)")
    t.add_argument("--weight-decay", type=finite, default=5e-4)
    t.add_argument("--optimizer", choices=["sgd", "lars", "adamw"], default="sgd", help=OPTIMIZER_HELP)
    t.add_argument("--warmup-epochs", type=int, default=10)
    t.add_argument("--image-size", type=int, default=32,
                   help="training resolution; up to 96 px the images live decoded on the device")
    t.add_argument("--workers", type=int, default=-1, help="DataLoader workers for images > 96 px "
                   "(-1: this machine's cores per rank, minus one, at most 8)")
    t.add_argument("--min-crop", type=finite, default=0.08, help="smallest random-resized-crop area")
    t.add_argument("--temperature", type=finite, default=None, help=TEMPERATURE_HELP)
    t.add_argument("--queue-size", type=int, default=None, help=QUEUE_HELP)
    t.add_argument("--local-crops", type=int, default=None, help=LOCAL_CROPS_HELP)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bf16 autocast: auto = where the GPU or CPU has native bf16")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard "
                   "(needs the tensorboard package)")
    t.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (counted)")
    t.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/simcore)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_pretrain)

    e = sub.add_parser("extract", help="backbone features of a dataset into a .npy file",
                       formatter_class=fmt)
    enc = e.add_mutually_exclusive_group(required=True)
    enc.add_argument("--checkpoint", help="a pretrain run's checkpoint.pt")
    enc.add_argument("--encoder", metavar="SPEC", help="or another encoder: a simcore checkpoint, "
                     "torchvision:NAME[:WEIGHTS|FILE] or efficientnet-lite0|1|2")
    e.add_argument("--size", type=int, default=None, metavar="PX",
                   help="input size (default: the checkpoint's training size; 224 for ImageNet models)")
    e.add_argument("--data", required=True, help="an ImageFolder tree, a .txt list of image paths, or "
                   "torchvision:NAME[:split]")
    e.add_argument("--out", required=True, metavar="FEATS.npy",
                   help="output; FEATS.paths.txt maps rows to images; reruns resume")
    e.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    e.add_argument("--amp", choices=["off", "bf16", "auto"], default="off",
                   help="run the encoder under bfloat16 autocast (channels-last): 2-3.5x faster on CPUs with "
                   "AVX512-BF16/AMX; auto: where the hardware has native bf16")
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    e.add_argument("--skip-bad-images", action="store_true")
    e.add_argument("--workers", type=int, default=-1, help="DataLoader workers for images > 96 px")
    e.add_argument("--cache-dir", default=None)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_extract)

    v = sub.add_parser("eval", help="kNN, linear-probe or fine-tuning accuracy of a checkpoint",
                       formatter_class=fmt, description="knn and linear: on frozen features of --train. "
                       "finetune: the whole network (the checkpoint's backbone and a new linear head) trained "
                       "on a class-balanced, seeded share of --train's labels (--label-fraction; at least one "
                       "image per class), with random-resized-crop + flip augmentation; SGD, momentum 0.9, "
                       "weight decay 5e-4, cosine lr. All report the final model's accuracy on --test; the "
                       "checkpoint file is only read.")
    v.add_argument("protocol", choices=["knn", "linear", "finetune"])
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--train", required=True, help="labelled training images (ImageFolder or torchvision:...)")
    v.add_argument("--test", required=True, help="labelled test images")
    v.add_argument("--epochs", type=int, default=argparse.SUPPRESS, help="training epochs (default: linear 100, finetune 50)")
    v.add_argument("--lr", type=finite, default=argparse.SUPPRESS, help="peak learning rate, cosine to 0 "
                   "(default: linear 0.1, finetune 0.05)")
    v.add_argument("--val-fraction", type=finite, default=0.0,
                   help="linear: hold this share of --train out and report its accuracy too (for tuning)")
    v.add_argument("--label-fraction", type=finite, default=0.1,
                   help="finetune: the share of --train's labels used, in (0, 1], per class (at least one image)")
    v.add_argument("--batch-size", type=int, default=64, help="finetune: batch size")
    v.add_argument("--min-crop", type=finite, default=0.2, help="finetune: smallest random-resized-crop area")
    v.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto", help="finetune: bf16 autocast "
                   "(auto: where the GPU or CPU has native bf16)")
    v.add_argument("--out", default=None, metavar="RESULT.json", help="also write the result there (atomically)")
    v.add_argument("--seed", type=int, default=0, help="probe, label subset and fine-tuning seed")
    v.add_argument("--device", default=None)
    v.add_argument("--workers", type=int, default=-1, help="DataLoader workers for images > 96 px")
    v.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (counted)")
    v.add_argument("--cache-dir", default=None)
    v.add_argument("--quiet", action="store_true", help="no progress bars")
    v.set_defaults(func=cmd_eval)

    s = sub.add_parser("select", help="select a coreset from feature files (.npy)", formatter_class=fmt)
    s.add_argument("--openset-features", nargs="+", required=True, metavar="U.npy",
                   help="open-set features; several files are shards in order")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--target-features", metavar="X.npy", help="target features")
    src.add_argument("--centroids", metavar="C.npy", help="explicit centroids instead of k-means")
    s.add_argument("--out", required=True, help="output folder: coreset.npz and selection.json")
    s.add_argument("--k", type=int, default=100, help="k-means centroids")
    s.add_argument("--budget", type=parse_budget, default=None,
                   help="items (5000) or a fraction of the open-set (1%% or 0.01); default 50 x target size")
    s.add_argument("--tau", type=parse_tau, default=0.95, help="stop threshold ratio, or 'none' to turn the criterion off")
    s.add_argument("--patience", type=int, default=20, help="round that fixes the threshold")
    s.add_argument("--metric", choices=["cosine", "dot"], default="cosine")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    s.add_argument("--chunk-size", type=int, default=None, help="open-set rows per streamed chunk")
    s.add_argument("--seed", type=int, default=0, help="k-means seed")
    s.add_argument("--whiten", type=int, default=0, metavar="D",
                   help="PCA-whiten X and U to D dimensions (fitted on U; with --target-features) before "
                   "selecting; OUT/whitening.npz keeps the transform; 0: raw features")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_select)
    return p


class DatasetUnavailable(RuntimeError):  # stand-in until simcore.data is imported
    pass


def main(argv=None) -> int:
    global DatasetUnavailable
    from .data import DatasetUnavailable  # noqa: F811 - the real one (torch import is paid anyway)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, DatasetUnavailable) as e:  # OSError: missing files, full disks...
        print(f"simcore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simcore {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
