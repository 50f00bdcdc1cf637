"""Where does extra data help SSL in the demo's world? X alone against X + n new images of
the target's own classes (the oracle: the best any sampler can pull), the same optimizer
steps each, at several step counts: the regime search behind the demo's settings.

    python benchmarks/demo_regime.py [--steps 150 300] [--seeds 0 1 2] [--extra 480]

The world is the demo's (simcore.demo.DEMO_DATA, seed 0 unless --world-seed), the training
the demo's (arch, batch; lr, smallest crop and image size unless --lr, --min-crop,
--image-size; SGD with weight decay 5e-4 and SimCLR's temperature (0.5) unless --optimizer,
--weight-decay, --temperature; warm-up a tenth of the steps); --seeds are training seeds (the
oracle's images are drawn per seed). Linear probe and kNN on the world's test split, as the
demo scores. Writes benchmarks/results/demo_regime.{json,md}."""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from demo_seeds import target_class_files
from simcore.demo import DEMO, DEMO_DATA
from simcore.evaluate import knn, linear_probe
from simcore.extract import FeatureSource, features_of, load_backbone
from simcore.pipeline import RunConfig
from simcore.synthetic import make_demo_data
from simcore.methods import METHODS
from simcore.train import TrainConfig, pretrain

TEMPERATURE = inspect.signature(METHODS["simclr"].__init__).parameters["temperature"].default  # SimCLR's
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def oracle_files(root: str, n: int, seed: int) -> list:
    files = target_class_files(root)
    if n > len(files):
        raise ValueError(f"--extra {n}: the world has {len(files)} target-class images")
    return [files[i] for i in np.random.default_rng(seed).choice(len(files), n, replace=False)]


def train_and_score(root: str, extra: list, steps: int, seed: int, out: str, sets, lr: float,
                    min_crop: float = RunConfig.min_crop, image_size: int = RunConfig.image_size,
                    **train_options) -> dict:
    """train_options: further TrainConfig fields (optimizer, weight_decay, method_options)."""
    data = [os.path.join(root, "target", "train")]
    os.makedirs(out, exist_ok=True)
    if extra:
        with open(os.path.join(out, "extra.txt"), "w") as f:
            f.writelines(p + "\n" for p in extra)
        data.append(os.path.join(out, "extra.txt"))
    t0 = time.perf_counter()
    trained = not os.path.exists(os.path.join(out, "done"))
    if trained:
        cfg = TrainConfig(data=data, out=out, arch=DEMO["arch"], steps=steps, warmup_steps=max(1, steps // 10),
                          batch_size=DEMO["batch_size"], lr=lr, min_crop=min_crop, seed=seed,
                          image_size=image_size, **train_options)
        pretrain(cfg.check(), resume=os.path.exists(os.path.join(out, "checkpoint.pt")), progress=False)
        open(os.path.join(out, "done"), "w").close()
    backbone, _ = load_backbone(os.path.join(out, "checkpoint.pt"), torch.device("cpu"))
    ftr, fte = features_of(backbone, sets[0]), features_of(backbone, sets[1])
    k = knn(ftr, sets[0].labels(), fte, sets[1].labels())
    lin = linear_probe(ftr, sets[0].labels(), fte, sets[1].labels(), epochs=DEMO["linear_epochs"], seed=seed)
    return dict(linear=lin["top1"], knn20=k[20], knn200=k[200], seconds=round(time.perf_counter() - t0, 1),
                trained=trained)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--extra", type=int, default=480, help="oracle images added to X")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=DEMO["lr"])
    ap.add_argument("--min-crop", type=float, default=DEMO.get("min_crop", RunConfig.min_crop))
    ap.add_argument("--image-size", type=int, default=RunConfig.image_size,
                    help="training and scoring size of the world's 32 px images")
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "lars", "adamw"))
    ap.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    ap.add_argument("--temperature", type=float, default=TEMPERATURE, help="SimCLR's")
    ap.add_argument("--work-dir", default=os.path.expanduser("~/.cache/simcore/demo_regime"))
    ap.add_argument("--out", default=os.path.join(RESULTS, "demo_regime"), help="output prefix")
    args = ap.parse_args()
    root = os.path.join(args.work_dir, f"world{args.world_seed}")
    make_demo_data(root, seed=args.world_seed, **DEMO_DATA)
    sets = [FeatureSource(os.path.join(root, "target", s), args.image_size, None, progress=False)
            for s in ("train", "test")]
    n_x = len(sets[0].labels())
    train_options, tag = {}, ""  # the defaults keep older folders' names
    if args.optimizer != "sgd" or args.weight_decay != TrainConfig.weight_decay:
        train_options.update(optimizer=args.optimizer, weight_decay=args.weight_decay)
        tag += f"_{args.optimizer}_wd{args.weight_decay}"
    if args.temperature != TEMPERATURE:
        train_options["method_options"] = dict(temperature=args.temperature)
        tag += f"_t{args.temperature}"
    rows = {}
    for steps in args.steps:
        for name, n in (("X", 0), (f"X + oracle ({args.extra})", args.extra)):
            for seed in args.seeds:
                img = f"_img{args.image_size}" if args.image_size != 32 else ""  # 32 px: older folders
                name_ = f"w{args.world_seed}_steps{steps}_extra{n}_lr{args.lr}_minc{args.min_crop}{img}{tag}_seed{seed}"
                out = os.path.join(args.work_dir, name_)
                extra = oracle_files(root, n, seed) if n else []
                r = train_and_score(root, extra, steps, seed, out, sets, args.lr, args.min_crop, args.image_size,
                                    **train_options)
                rows.setdefault(f"{steps}", {}).setdefault(name, {})[seed] = r
                print(json.dumps(dict(steps=steps, row=name, seed=seed, **r)), flush=True)
    lines = [f"Demo world (seed {args.world_seed}: {DEMO_DATA}), X = {n_x} images; SimCLR {DEMO['arch']}, "
             f"batch {DEMO['batch_size']}, {args.optimizer} lr {args.lr} weight decay {args.weight_decay}, "
             f"temperature {args.temperature}, min crop {args.min_crop}, {args.image_size} px; training seeds {args.seeds}; "
             "mean ± std.", "",
             "| steps | X-epochs | pretraining data | linear top-1 | kNN k=20 | linear gain over X |", "|---|---|---|---|---|---|"]
    for steps, by_row in rows.items():
        x = [by_row["X"][s]["linear"] for s in args.seeds]
        for name, per_seed in by_row.items():
            lin = [per_seed[s]["linear"] for s in args.seeds]
            k20 = [per_seed[s]["knn20"] for s in args.seeds]
            gain = [a - b for a, b in zip(lin, x)]
            lines.append(f"| {steps} | {int(steps) * DEMO['batch_size'] / n_x:.0f} | {name} | {_fmt(lin)} | {_fmt(k20)} | "
                         + ("-" if name == "X" else _fmt(gain, sign=True)) + " |")
    runs = [r for b in rows.values() for p in b.values() for r in p.values()]
    cached = sum(not r["trained"] for r in runs)
    lines += ["", f"{platform.machine()}, {torch.get_num_threads()} threads; {sum(r['seconds'] for r in runs):.0f} s "
              "in all" + (f" ({cached} of {len(runs)} encoders were trained by an earlier run: only their scoring "
                          "is counted)" if cached else "") + "."]
    md = "\n".join(lines)
    # the demo's settings as these encoders were trained (the options override them)
    trained_as = dict(DEMO, lr=args.lr, min_crop=args.min_crop, image_size=args.image_size, optimizer=args.optimizer,
                      weight_decay=args.weight_decay, temperature=args.temperature)
    print(md)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for ext, text in (("md", md + "\n"), ("json", json.dumps(dict(args=vars(args), demo_data=DEMO_DATA, demo=trained_as,
                                                                    rows=rows), indent=2))):
        with open(f"{args.out}.{ext}.tmp", "w") as f:
            f.write(text)
        os.replace(f"{args.out}.{ext}.tmp", f"{args.out}.{ext}")


def _fmt(values, sign=False) -> str:
    m = statistics.mean(values)
    s = f"{m:+.1f}" if sign else f"{m:.1f}"
    return f"{s} ± {statistics.stdev(values):.1f}" if len(values) > 1 else s


if __name__ == "__main__":
    main()
