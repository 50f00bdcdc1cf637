"""Self-supervised pretraining on the fine-grained target alone (tinyopenssl dogs), against
a randomly initialised encoder: kNN (k = 20, 200) and linear-probe accuracy on dogs/test,
seconds per epoch, for several seeds. Not a test: a measurement.

    python benchmarks/ssl_dogs.py --data-dir ../shared/data/tinyopenssl [--epochs 100]

Writes benchmarks/results/ssl_dogs.json and prints a markdown table. Hyper-parameters come
from the command line (chosen on a validation split cut from dogs/train, never the test
split)."""
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
from simcore.evaluate import features, knn, linear_probe
from simcore.extract import load_backbone
from simcore.models import build_backbone
from simcore.train import TrainConfig, pretrain


def evaluate(backbone, train, test, size, seed):
    ftr, fte = features(backbone, train.images, size), features(backbone, test.images, size)
    k = knn(ftr, train.labels, fte, test.labels)
    lin = linear_probe(ftr, train.labels, fte, test.labels, seed=seed)
    return {"knn20": k[20], "knn200": k[200], "linear": lin["top1"], "linear_mpc": lin["mean_per_class"]}


def main():
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="the tinyopenssl folder (dogs/train, dogs/test)")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arch", default="resnet18-w0.25")
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.25)
    ap.add_argument("--warmup-epochs", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "ssl_dogs.json"))
    ap.add_argument("--work-dir", default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()

    train_dir = os.path.join(args.data_dir, "dogs", "train")
    test_dir = os.path.join(args.data_dir, "dogs", "test")
    train, test = (load_images(p, 32, cache_dir=args.cache_dir) for p in (train_dir, test_dir))
    work = args.work_dir or tempfile.mkdtemp(prefix="simcore-ssl-")
    rows = []
    for seed in args.seeds:
        out = os.path.join(work, f"seed{seed}")
        cfg = TrainConfig(data=[train_dir], out=out, method=args.method, arch=args.arch,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          warmup_epochs=min(args.warmup_epochs, args.epochs), seed=seed,
                          cache_dir=args.cache_dir)
        t0 = time.perf_counter()
        pretrain(cfg, resume=os.path.exists(os.path.join(out, "checkpoint.pt")), progress=False)
        wall = time.perf_counter() - t0
        with open(os.path.join(out, "metrics.csv")) as f:
            epoch_s = [float(r["seconds"]) for r in csv.DictReader(f)]
        trained, _ = load_backbone(os.path.join(out, "checkpoint.pt"), torch.device("cpu"))
        torch.manual_seed(seed)
        random = build_backbone(args.arch, small_images=True)
        rows.append(dict(seed=seed, seconds_per_epoch=statistics.median(epoch_s), wall_s=wall,
                         pretrained=evaluate(trained, train, test, 32, seed),
                         random=evaluate(random, train, test, 32, seed)))
        print(json.dumps(rows[-1]), flush=True)

    def ms(key, which):
        v = [r[which][key] for r in rows]
        return f"{statistics.mean(v):.1f} +- {statistics.stdev(v) if len(v) > 1 else 0:.1f}"

    lines = [f"SimCLR, {args.arch}, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, "
             f"{len(rows)} seeds; dogs/train (1,800 images, 32 px) -> dogs/test (300); "
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", "",
             "| encoder | kNN k=20 | kNN k=200 | linear top-1 | linear mean/class |", "|---|---|---|---|---|"]
    for which in ("random", "pretrained"):
        lines.append(f"| {which} | {ms('knn20', which)} | {ms('knn200', which)} | {ms('linear', which)} | "
                     f"{ms('linear_mpc', which)} |")
    spe = statistics.median(r["seconds_per_epoch"] for r in rows)
    lines += ["", f"Seconds per epoch (median): {spe:.2f}; {args.epochs} epochs: "
              f"{spe * args.epochs / 60:.1f} min per seed."]
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(args=vars(args), rows=rows, table="\n".join(lines)), f, indent=2)


if __name__ == "__main__":
    main()
