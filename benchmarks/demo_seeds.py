"""`simcore demo` over several seeds: mean and spread of what one demo run prints, and the
oracle row (X + the open-set's target-class images, as many as the coreset, the same
optimizer steps): the ceiling of any sampler in the demo's world.

    python benchmarks/demo_seeds.py [--seeds 0 1 2] [--min-crop F] [--lr LR] [--optimizer adamw]
                                   [--weight-decay WD] [--related squares] [--work-dir DIR]

Every seed is a whole demo (its own generated data, encoders and selection) in
WORK_DIR/seedS (seedS_lr0.002_optimizeradamw... with options set), resumable like `simcore
run`. Writes benchmarks/results/demo_seeds.{json,md}."""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import statistics
import time

import numpy as np
import torch

from simcore.demo import DEMO, DEMO_DATA, demo_config, run_demo
from simcore.evaluate import knn, linear_probe
from simcore.extract import FeatureSource, features_of, load_backbone
from simcore.pipeline import Run
from simcore.train import pretrain

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
METRICS = ("linear", "knn20", "knn200")


def target_class_files(root: str) -> list:
    """Every open-set image of a generated world's target classes (root: the world's folder), sorted."""
    with open(os.path.join(root, "openset_classes.tsv")) as f:
        folders = [r["folder"] for r in csv.DictReader(f, delimiter="\t") if r["group"] == "target-class"]
    return sorted(os.path.join(root, "openset", d, x) for d in folders for x in os.listdir(os.path.join(root, "openset", d)))


def oracle(run: Run, seed: int) -> dict:
    """X + as many of the open-set's target-class images as the coreset holds."""
    cfg = run.cfg
    files = target_class_files(os.path.dirname(cfg.openset[0]))
    n = run.stage_record("select")["items"]
    if len(files) > n:
        files = [files[i] for i in np.random.default_rng(seed).choice(len(files), n, replace=False)]
    out = run.path("oracle")
    lst = out + ".txt"
    with open(lst, "w") as f:
        f.writelines(p + "\n" for p in sorted(files))
    steps = run.stage_record("pretrain")
    # trained under this very pretrain stage (settings, X) and oracle list, or trained anew
    with open(lst, "rb") as f:
        key = f"{steps['key']} {hashlib.sha1(f.read()).hexdigest()}"
    key_file = out + ".key"
    if not os.path.exists(key_file) or _read(key_file) != key:
        shutil.rmtree(out, ignore_errors=True)
        with open(key_file, "w") as f:
            f.write(key)
    if not os.path.exists(os.path.join(out, "done")):
        pretrain(cfg.train_config([cfg.target, lst], out, steps["steps"], steps["warmup_steps"]),
                 resume=os.path.exists(os.path.join(out, "checkpoint.pt")), progress=False)
        open(os.path.join(out, "done"), "w").close()
    sets = [FeatureSource(x, cfg.image_size, cfg.cache_dir) for x in (cfg.target, cfg.test)]
    backbone, _ = load_backbone(os.path.join(out, "checkpoint.pt"), torch.device("cpu"))
    ftr, fte = features_of(backbone, sets[0]), features_of(backbone, sets[1])
    k = knn(ftr, sets[0].labels(), fte, sets[1].labels())
    lin = linear_probe(ftr, sets[0].labels(), fte, sets[1].labels(), epochs=cfg.linear_epochs, seed=cfg.seed)
    return dict(linear=lin["top1"], knn20=k[20], knn200=k[200], items=len(files))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def fmt(values) -> str:
    m = statistics.mean(values)
    return f"{m:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{m:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--related", choices=["variants", "squares"], default=None,
                    help="the open-set's relatives (simcore.synthetic; default: the demo's)")
    ap.add_argument("--min-crop", type=float, default=None,
                    help="smallest crop of every training (default: the demo's; a changed one retrains)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate of every training (default: the demo's)")
    ap.add_argument("--optimizer", choices=["sgd", "lars", "adamw"], default=None,
                    help="optimizer of every training (default: the demo's)")
    ap.add_argument("--weight-decay", type=float, default=None, help="of every training (default: the demo's)")
    ap.add_argument("--work-dir", default=os.path.expanduser("~/.cache/simcore/demo_seeds"))
    ap.add_argument("--out", default=os.path.join(RESULTS, "demo_seeds"), help="output prefix")
    args = ap.parse_args()
    run_options = {k: getattr(args, k) for k in ("min_crop", "lr", "optimizer", "weight_decay")
                   if getattr(args, k) is not None}
    demo = dict(DEMO, **run_options)
    per_seed = {}
    for seed in args.seeds:
        # each setting its own folder: switching back and forth does not retrain
        out = os.path.join(args.work_dir, f"seed{seed}" + "".join(f"_{k}{v}" for k, v in sorted(run_options.items())))
        t0 = time.perf_counter()
        run_demo(out=out, seed=seed, progress=False,
                 data_options=dict(related=args.related) if args.related else None, run_options=run_options)
        seconds = time.perf_counter() - t0
        run = Run(demo_config(out, seed, run_options), progress=False, log=lambda *a: None)
        rows = dict(run.stage_record("eval")["results"])
        rows["X + oracle"] = oracle(run, seed)
        per_seed[seed] = dict(rows=rows, composition=run.stage_record("report")["composition"].get("group", {}),
                              items=run.stage_record("select")["items"], demo_seconds=round(seconds, 1))
        print(json.dumps({seed: per_seed[seed]["rows"]}), flush=True)
    names = list(per_seed[args.seeds[0]]["rows"])
    lines = [f"`simcore demo`, seeds {args.seeds} (mean ± std over seeds; each seed its own generated world, "
             f"encoders and selection). Data: {dict(DEMO_DATA, **({'related': args.related} if args.related else {}))}; "
             f"run: {demo}.", "",
             "| pretraining data | linear top-1 | kNN k=20 | kNN k=200 |", "|---|---|---|---|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(fmt([per_seed[s]["rows"][name][m] for s in args.seeds])
                                               for m in METRICS) + " |")
    x = {m: statistics.mean(per_seed[s]["rows"]["X"][m] for s in args.seeds) for m in METRICS}
    gains = []
    for name in ("X + SimCore", "X + random"):
        d = {m: statistics.mean(per_seed[s]["rows"][name][m] for s in args.seeds) - x[m] for m in METRICS}
        o = {m: statistics.mean(per_seed[s]["rows"]["X + oracle"][m] for s in args.seeds) - x[m] for m in METRICS}
        gains.append(f"{name} - X: " + ", ".join(f"{m} {d[m]:+.1f}" for m in METRICS)
                     + " (oracle " + ", ".join(f"{o[m]:+.1f}" for m in METRICS) + ")")
    sim = {m: statistics.mean(per_seed[s]["rows"]["X + SimCore"][m] for s in args.seeds) - x[m] for m in METRICS}
    ora = {m: statistics.mean(per_seed[s]["rows"]["X + oracle"][m] for s in args.seeds) - x[m] for m in METRICS}
    gains.append("share of the oracle's gain SimCore recovers: " + ", ".join(
        f"{m} {sim[m] / ora[m]:.2f}" if ora[m] > 0 else f"{m} - (the oracle gains nothing)" for m in METRICS))
    lines += [""] + gains + ["", "Linear top-1 per seed (gain over X):", "",
                             "| seed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for s in args.seeds:
        lin = {n: per_seed[s]["rows"][n]["linear"] for n in names}
        lines.append(f"| {s} | " + " | ".join(f"{lin[n]:.1f}" + ("" if n == "X" else f" ({lin[n] - lin['X']:+.1f})")
                                             for n in names) + " |")
    lines += [""]
    for sampler in per_seed[args.seeds[0]]["composition"]:
        groups = per_seed[args.seeds[0]]["composition"][sampler]
        lines.append(f"- {sampler}: " + ", ".join(
            f"{g} {statistics.mean(per_seed[s]['composition'][sampler][g] for s in args.seeds):.1f}%" for g in groups))
    lines += ["", f"Coreset {statistics.mean(per_seed[s]['items'] for s in args.seeds):.0f} items; one demo took "
              f"{fmt([per_seed[s]['demo_seconds'] for s in args.seeds])} s on {platform.machine()} "
              f"({torch.get_num_threads()} threads)."]
    md = "\n".join(lines)
    print(md)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md.tmp", "w") as f:
        f.write(md + "\n")
    os.replace(args.out + ".md.tmp", args.out + ".md")
    with open(args.out + ".json.tmp", "w") as f:
        json.dump(dict(seeds=args.seeds, demo_data=dict(DEMO_DATA, **({'related': args.related} if args.related else {})),
                       demo=demo, per_seed=per_seed), f, indent=2)
    os.replace(args.out + ".json.tmp", args.out + ".json")


if __name__ == "__main__":
    main()
