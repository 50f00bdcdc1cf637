"""Semi-supervised fine-tuning on tinyopenssl dogs (issue 12): the whole network fine-tuned on
10/20/50% of dogs/train's labels (class-balanced, seeded), from a SimCLR checkpoint and from
random initialisation; top-1 and mean-per-class accuracy on dogs/test, seconds per run.
Not a test: a measurement.

    python benchmarks/finetune_dogs.py --data-dir ../shared/data/tinyopenssl [--checkpoint CKPT.pt]

Without --checkpoint it pretrains one first (SimCLR resnet18-w0.25, --pretrain-epochs of
dogs/train, batch 256, lr 0.3: the recipe of ssl_dogs.py and openssl_table.py). Fine-tuning
uses simcore.evaluate.finetune's defaults (those of `simcore eval finetune`). Writes
benchmarks/results/finetune_dogs.json and prints a markdown table."""
import argparse
import json
import os
import platform
import tempfile
import time

import torch

from simcore.data import load_images
from simcore.evaluate import finetune, label_subset
from simcore.extract import load_backbone
from simcore.models import build_backbone
from simcore.train import TrainConfig, pretrain


def main():
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="the tinyopenssl folder (dogs/train, dogs/test)")
    ap.add_argument("--checkpoint", default=None, help="a simcore pretrain checkpoint (default: pretrain one)")
    ap.add_argument("--pretrain-epochs", type=int, default=60, help="without --checkpoint (60 = 420 steps)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.5])
    ap.add_argument("--epochs", type=int, default=50, help="fine-tuning epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "finetune_dogs.json"))
    ap.add_argument("--work-dir", default=None, help="the pretraining run folder (default: a temporary folder)")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()

    train_dir = os.path.join(args.data_dir, "dogs", "train")
    test_dir = os.path.join(args.data_dir, "dogs", "test")
    ckpt, pretrain_s = args.checkpoint, None
    if ckpt is None:
        out = args.work_dir or tempfile.mkdtemp(prefix="simcore-ft-")
        cfg = TrainConfig(data=[train_dir], out=out, method="simclr", arch="resnet18-w0.25",
                          epochs=args.pretrain_epochs, batch_size=256, lr=0.3,
                          warmup_epochs=min(10, args.pretrain_epochs), seed=args.seed, cache_dir=args.cache_dir)
        t0 = time.perf_counter()
        pretrain(cfg, resume=os.path.exists(os.path.join(out, "checkpoint.pt")), progress=False)
        pretrain_s = time.perf_counter() - t0
        ckpt = os.path.join(out, "checkpoint.pt")
    _, cfg = load_backbone(ckpt, torch.device("cpu"))
    run_config = os.path.join(os.path.dirname(os.path.abspath(ckpt)), "config.json")
    if os.path.exists(run_config):  # the schedule as run
        with open(run_config) as f:
            cfg = dict(cfg, total_steps=json.load(f).get("total_steps"))
    train, test = (load_images(p, cfg["image_size"], cache_dir=args.cache_dir) for p in (train_dir, test_dir))
    rows = []
    for fraction in args.fractions:
        idx, raised = label_subset(train.labels, fraction, args.seed)
        for init in ("SimCLR", "random"):
            if init == "SimCLR":
                backbone, _ = load_backbone(ckpt, torch.device("cpu"))
            else:
                torch.manual_seed(args.seed)
                backbone = build_backbone(cfg["arch"], small_images=cfg["image_size"] <= 96)
            t0 = time.perf_counter()
            acc = finetune(backbone, train.images[idx], train.labels[idx], test.images, test.labels,
                           epochs=args.epochs, seed=args.seed)
            rows.append(dict(fraction=fraction, images=int(idx.numel()), init=init, seconds=time.perf_counter() - t0,
                             **acc))
            print(json.dumps(rows[-1]), flush=True)

    lines = [f"{cfg['method']} {cfg['arch']}, {cfg.get('total_steps', '?')} pretraining steps "
             f"(batch {cfg['batch_size']}); fine-tuning {args.epochs} epochs, seed {args.seed}; "
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", "",
             "| labels | images | init | top-1 | mean/class | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {100 * r['fraction']:g}% | {r['images']} | {r['init']} | {r['top1']:.1f} | "
              f"{r['mean_per_class']:.1f} | {r['seconds']:.0f} |" for r in rows]
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(dict(checkpoint=ckpt, pretrain_seconds=pretrain_s, config=cfg, epochs=args.epochs,
                       seed=args.seed, rows=rows), f, indent=2, default=str)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
