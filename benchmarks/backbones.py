"""SSL training throughput per backbone (issue 12): images/s of `simcore pretrain` (the
real training loop: batched augmentation on the device, forward and backward of both
views, SGD) on random 32 px images, on this machine. Not a test: a measurement.

    python benchmarks/backbones.py [--archs resnet18 vit_tiny ...] [--method simclr] \
        [--batch-size 64] [--epochs 3] [--amp auto]

Each arch trains `--epochs` epochs of 2 steps; the first epoch (one-time kernel set-up)
is not counted, the others' images/s (metrics.csv) are, by their median. Writes
benchmarks/results/backbones.json and prints a markdown table."""
import argparse
import csv
import json
import os
import platform
import statistics
import tempfile

import numpy as np
import torch
from PIL import Image

from simcore.models import ARCH_NAMES, build_backbone
from simcore.train import TrainConfig, _autocast_dtype, pretrain


def main():
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=ARCH_NAMES + ["resnet18-w0.25"])
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="of 2 steps each; the first is not counted")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "backbones.json"))
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="simcore-backbones-")
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(work, "imgs", "c0"))
    for i in range(2 * args.batch_size):  # 2 steps per epoch
        img = rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
        Image.fromarray(img).save(os.path.join(work, "imgs", "c0", f"{i}.png"))
    amp = _autocast_dtype(args.amp, torch.device("cpu"))
    rows = []
    for arch in args.archs:
        out = os.path.join(work, arch)
        cfg = TrainConfig(data=[os.path.join(work, "imgs")], out=out, method=args.method, arch=arch,
                          epochs=args.epochs, batch_size=args.batch_size, warmup_epochs=0,
                          image_size=args.image_size, amp=args.amp, cache_dir=os.path.join(work, "cache"))
        pretrain(cfg, progress=False)
        with open(os.path.join(out, "metrics.csv")) as f:
            speeds = [float(r["images_per_s"]) for r in csv.DictReader(f)][1:]
        bb = build_backbone(arch, small_images=args.image_size <= 96, image_size=args.image_size)
        rows.append(dict(arch=arch, images_per_s=statistics.median(speeds), epochs_counted=speeds,
                         params_m=sum(p.numel() for p in bb.parameters()) / 1e6, feature_dim=bb.feature_dim))
        print(json.dumps(rows[-1]), flush=True)

    lines = [f"{args.method}, {args.image_size} px, batch {args.batch_size}, autocast "
             f"{amp if amp is None else str(amp).replace('torch.', '')}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, {platform.machine()}", "",
             "| arch | backbone params (M) | feature dim | training images/s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['params_m']:.1f} | {r['feature_dim']} | {r['images_per_s']:.1f} |")
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(args=vars(args), rows=rows, table="\n".join(lines)), f, indent=2)


if __name__ == "__main__":
    main()
