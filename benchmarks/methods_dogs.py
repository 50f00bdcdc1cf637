"""Every SSL method on the fine-grained target alone (tinyopenssl dogs) at one fixed budget:
training images/s on this machine, and kNN (k = 20, 200) and linear-probe accuracy on
dogs/test against the same backbone randomly initialised. Not a test: a measurement
(issue 12), one seed per method.

    python benchmarks/methods_dogs.py --data-dir ../shared/data/tinyopenssl \
        [--runs simclr:resnet18-w0.25 dino:resnet18-w0.25:out_dim=1024 ...] [--steps 300] [--batch-size 128]

A run is METHOD:ARCH[:OPTION=VALUE...] (method options, VALUE as JSON). Methods train with SGD at --lr (one value for all, untuned per
method), except MAE and ViT runs of DINO with AdamW at --adamw-lr and weight decay 0.05
(the papers' optimizer for ViTs). MoCo's queue is 1024 keys (below the 1,800 images).
images/s is the median over epochs after the first (one-time set-up), from metrics.csv.
Writes benchmarks/results/methods_dogs.json (rows of earlier runs with the same settings
kept) and prints a markdown table."""
import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from simcore.data import load_images
from simcore.extract import load_backbone
from simcore.models import build_backbone
from simcore.train import TrainConfig, pretrain
from ssl_dogs import evaluate

RUNS = ["simclr:resnet18-w0.25", "byol:resnet18-w0.25", "simsiam:resnet18-w0.25", "moco:resnet18-w0.25",
        "swav:resnet18-w0.25", "dino:resnet18-w0.25", "mae:vit_tiny"]


def main():
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="the tinyopenssl folder (dogs/train, dogs/test)")
    ap.add_argument("--runs", nargs="+", default=RUNS, metavar="METHOD:ARCH")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1, help="SGD's peak learning rate")
    ap.add_argument("--adamw-lr", type=float, default=1e-3, help="AdamW's peak learning rate (MAE, ViT DINO)")
    ap.add_argument("--warmup-steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "methods_dogs.json"))
    ap.add_argument("--work-dir", default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()

    train_dir = os.path.join(args.data_dir, "dogs", "train")
    test_dir = os.path.join(args.data_dir, "dogs", "test")
    train, test = (load_images(p, 32, cache_dir=args.cache_dir) for p in (train_dir, test_dir))
    work = args.work_dir or tempfile.mkdtemp(prefix="simcore-methods-")
    rows = []
    for run in args.runs:
        method, arch, *opts = run.split(":")
        options = {k: json.loads(v) for k, v in (o.split("=") for o in opts)}
        adamw = method == "mae" or (method == "dino" and arch.startswith("vit"))
        out = os.path.join(work, run.replace(":", "-"))
        cfg = TrainConfig(data=[train_dir], out=out, method=method, arch=arch, steps=args.steps,
                          warmup_steps=args.warmup_steps, batch_size=args.batch_size,
                          lr=args.adamw_lr if adamw else args.lr, optimizer="adamw" if adamw else "sgd",
                          weight_decay=0.05 if adamw else 5e-4, seed=args.seed, cache_dir=args.cache_dir,
                          method_options=dict(dict(queue_size=1024) if method == "moco" else {}, **options))
        t0 = time.perf_counter()
        pretrain(cfg, resume=os.path.exists(os.path.join(out, "checkpoint.pt")), progress=False)
        wall = time.perf_counter() - t0
        with open(os.path.join(out, "metrics.csv")) as f:
            metrics = list(csv.DictReader(f))
        speeds = [float(r["images_per_s"]) for r in metrics][1:]
        trained, _ = load_backbone(os.path.join(out, "checkpoint.pt"), torch.device("cpu"))
        torch.manual_seed(args.seed)
        random = build_backbone(arch, small_images=True, image_size=32)
        rows.append(dict(method=method, arch=arch, options=options, optimizer=cfg.optimizer, lr=cfg.peak_lr, wall_s=wall,
                         images_per_s=statistics.median(speeds) if speeds else None,
                         last_loss=float(metrics[-1]["loss"]),
                         pretrained=evaluate(trained, train, test, 32, args.seed),
                         random=evaluate(random, train, test, 32, args.seed)))
        print(json.dumps(rows[-1]), flush=True)

    key = lambda r: (r["method"], r["arch"], json.dumps(r.get("options", {}), sort_keys=True))  # noqa: E731
    if os.path.exists(args.out):  # earlier runs of other methods stay, if measured the same way
        with open(args.out) as f:
            old = json.load(f)
        same = {k: v for k, v in old["args"].items() if k not in ("runs", "work_dir", "out", "cache_dir")}
        if same == {k: v for k, v in vars(args).items() if k not in ("runs", "work_dir", "out", "cache_dir")}:
            mine = {key(r) for r in rows}
            rows = [r for r in old["rows"] if key(r) not in mine] + rows
    lines = [f"{args.steps} steps of batch {args.batch_size} (~{args.steps * args.batch_size / 1800:.0f} epochs of "
             f"dogs/train: 1,800 images, 32 px) -> dogs/test (300); seed {args.seed}; SGD lr {args.lr}, AdamW lr "
             f"{args.adamw_lr}; {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", "",
             "| method | arch | images/s | kNN k=20 (random init) | kNN k=200 (random init) | linear (random init) | "
             "kNN k=20 gain |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        p, q = r["pretrained"], r["random"]
        lines.append(f"| {r['method']}{''.join(f' {k}={v}' for k, v in r.get('options', {}).items())} | {r['arch']} | {r['images_per_s']:.0f} | {p['knn20']:.1f} ({q['knn20']:.1f}) | "
                     f"{p['knn200']:.1f} ({q['knn200']:.1f}) | {p['linear']:.1f} ({q['linear']:.1f}) | "
                     f"{p['knn20'] - q['knn20']:+.1f} |")
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(args=vars(args), rows=rows, table="\n".join(lines)), f, indent=2)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
