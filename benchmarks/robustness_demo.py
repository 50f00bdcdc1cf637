"""The paper's robustness table in miniature (issue 12): X against X + SimCore for every SSL
method, on the demo's generated world (`simcore demo`'s data and schedule: 240 target
images, a 6,000-image open-set, 300 optimizer steps, an 8% coreset), one seed. Each method
runs the whole `simcore run` pipeline: its own encoder on X selects its own coreset, and
retraining on X + coreset takes the same optimizer steps.

    python benchmarks/robustness_demo.py [--runs simclr:resnet18-w0.25 ... mae:vit_tiny] \
        [--seed 0] [--work-dir DIR]

A run is METHOD:ARCH. SGD at the demo's learning rate for the CNN methods; MAE and ViT
runs of DINO take AdamW (lr --adamw-lr, weight decay 0.05). One seed: the demo's linear
accuracy moves by several points between training seeds alone (benchmarks/RESULTS.md,
issue 11), so a single row is an observation, not a measured effect. Resumable per run
(WORK_DIR/METHOD-ARCH). Writes benchmarks/results/robustness_demo.{json,md}."""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from simcore.demo import DEMO, DEMO_DATA
from simcore.pipeline import Run, RunConfig
from simcore.synthetic import make_demo_data

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RUNS = ["simclr:resnet18-w0.25", "byol:resnet18-w0.25", "simsiam:resnet18-w0.25", "moco:resnet18-w0.25",
        "swav:resnet18-w0.25", "dino:resnet18-w0.25"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", default=RUNS, metavar="METHOD:ARCH")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adamw-lr", type=float, default=1e-3)
    ap.add_argument("--work-dir", default=os.path.expanduser("~/.cache/simcore/robustness_demo"))
    ap.add_argument("--out", default=os.path.join(RESULTS, "robustness_demo"), help="output prefix")
    args = ap.parse_args()
    data = os.path.join(args.work_dir, f"data{args.seed}")
    if not os.path.exists(os.path.join(data, "openset_classes.tsv")):
        make_demo_data(data, seed=args.seed, progress=False, **DEMO_DATA)
    rows = []
    for spec in args.runs:
        method, arch = spec.split(":")
        adamw = method == "mae" or (method == "dino" and arch.startswith("vit"))
        settings = dict(DEMO, arch=arch)
        if adamw:
            settings.update(lr=args.adamw_lr, optimizer="adamw", weight_decay=0.05)
        cfg = RunConfig(target=os.path.join(data, "target", "train"), test=os.path.join(data, "target", "test"),
                        openset=[os.path.join(data, "openset")], out=os.path.join(args.work_dir, f"{method}-{arch}"),
                        seed=args.seed, method=method, openset_groups=os.path.join(data, "openset_classes.tsv"),
                        method_options=dict(queue_size=64) if method == "moco" else {}, **settings)
        t0 = time.perf_counter()
        run = Run(cfg.check(), progress=False, log=lambda *a: None)
        run.run()
        ev = run.stage_record("eval")["results"]
        comp = run.stage_record("report")["composition"].get("group", {}).get("SimCore", {})
        rows.append(dict(method=method, arch=arch, X=ev["X"], simcore=ev["X + SimCore"], coreset=comp,
                         items=run.stage_record("select")["items"], seconds=round(time.perf_counter() - t0, 1)))
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"Demo world seed {args.seed} ({DEMO_DATA}); schedule {DEMO} with each run's method and arch; "
             f"one seed; {platform.machine()}, {torch.get_num_threads()} threads.", "",
             "| method | arch | X linear | X + SimCore linear | gain | X kNN k=20 | X + SimCore kNN k=20 | gain | "
             "coreset: target-class / related | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        x, s, c = r["X"], r["simcore"], r["coreset"]
        lines.append(f"| {r['method']} | {r['arch']} | {x['linear']:.1f} | {s['linear']:.1f} | "
                     f"{s['linear'] - x['linear']:+.1f} | {x['knn20']:.1f} | {s['knn20']:.1f} | "
                     f"{s['knn20'] - x['knn20']:+.1f} | {c.get('target-class', 0):.0f}% / {c.get('related', 0):.0f}% | "
                     f"{r['seconds']:.0f} |")
    md = "\n".join(lines)
    print(md)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for ext, text in (("md", md + "\n"), ("json", json.dumps(dict(args=vars(args), rows=rows), indent=2))):
        with open(f"{args.out}.{ext}.tmp", "w") as f:
            f.write(text)
        os.replace(f"{args.out}.{ext}.tmp", f"{args.out}.{ext}")


if __name__ == "__main__":
    main()
