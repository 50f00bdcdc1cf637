"""`simcore run --resample N` on the demo's generated world: what each re-selection keeps
of the coreset before it, how much of it is of the target's classes, what it costs, and
the accuracy of X + SimCore (one seed: a look, not a verdict).

    python benchmarks/resample_demo.py [--out /tmp/resample-demo] [--seed 0] [--resample 0 2 4]

One run folder: pretraining, extraction and the first selection run once; each --resample
value re-runs retraining, evaluation and the report (their keys follow it)."""
import argparse
import os
import time

from simcore.demo import DEMO, DEMO_DATA
from simcore.pipeline import Run, RunConfig
from simcore.report import read_groups
from simcore.synthetic import make_demo_data


def target_share(path: str, openset: str, groups: dict) -> float:
    with open(path) as f:
        folders = [os.path.relpath(line.strip(), openset).split(os.sep)[0] for line in f if line.strip()]
    return 100 * sum(groups.get(x) == "target-class" for x in folders) / max(1, len(folders))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/resample-demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resample", type=int, nargs="+", default=[0, 2, 4])
    args = ap.parse_args()
    data = os.path.join(args.out, "data")
    make_demo_data(data, seed=args.seed, progress=False, **DEMO_DATA)
    openset, tsv = os.path.join(data, "openset"), os.path.join(data, "openset_classes.tsv")
    groups = read_groups(tsv)
    rows = []
    for n in args.resample:
        cfg = RunConfig(target=os.path.join(data, "target", "train"), test=os.path.join(data, "target", "test"),
                        openset=[openset], out=args.out, seed=args.seed, openset_groups=tsv, resample=n, **DEMO)
        run = Run(cfg.check(), progress=False, log=lambda line: print(line, flush=True))
        t0 = time.perf_counter()
        run.run()
        retrain = run.stage_record("retrain")
        ev = run.stage_record("eval")["results"]["X + SimCore"]
        shares = [target_share(run.path("select", "coreset.txt"), openset, groups)]
        shares += [target_share(run.path("retrain", f"resample_{i}", "coreset.txt"), openset, groups)
                   for i in range(1, n + 1)]
        kept = [f"{100 * r['overlap_fraction']:.0f}%" for r in retrain.get("resampled", [])]
        rows.append([str(n), f"{retrain['seconds']:.0f}", " / ".join(f"{s:.0f}%" for s in shares),
                     " / ".join(kept) or "-", f"{ev['linear']:.1f}", f"{ev['knn20']:.1f}",
                     f"{time.perf_counter() - t0:.0f}"])
    x = run.stage_record("eval")["results"]["X"]
    print(f"\nX alone: linear {x['linear']:.1f}, kNN(20) {x['knn20']:.1f}; {retrain['steps']} retraining steps\n")
    header = ["--resample", "retrain s", "target-class share of each coreset", "kept from the previous",
              "X + SimCore linear", "kNN(20)", "run s"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
