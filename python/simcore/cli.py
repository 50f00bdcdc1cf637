"""The `simcore` command line: one subcommand per stage.

    simcore demo                  a selection on built-in generated features
    simcore select ...            select a coreset from feature files (.npy)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def parse_budget(text: str):
    """'1%' or '0.01' (a fraction of the open-set) or '5000' (items)."""
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100
        return int(text) if text.isdigit() else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must look like 1%%, 0.01 or 5000, got {text!r}")


def parse_tau(text: str):
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tau must be a number in (0, 1] or 'none', got {text!r}")


def cmd_select(args) -> int:
    from simcore_ext import select_coreset
    from simcore_ext.result import atomic_write

    for p in args.openset_features + [x for x in (args.target_features, args.centroids) if x]:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"no such file: {p}")
    target = np.load(args.target_features, mmap_mode="r") if args.target_features else None
    centroids = np.load(args.centroids) if args.centroids else None
    r = select_coreset(target, args.openset_features, k=args.k, centroids=centroids, budget=args.budget,
                       tau=args.tau, patience=args.patience, metric=args.metric, device=args.device,
                       chunk_size=args.chunk_size, seed=args.seed, progress=not args.quiet)
    os.makedirs(args.out, exist_ok=True)
    r.save(os.path.join(args.out, "coreset.npz"))
    summary = dict(items=len(r), rounds=r.rounds, stop_reason=r.stop_reason, threshold=r.threshold,
                   params=r.params, stats=r.stats)
    atomic_write(os.path.join(args.out, "selection.json"), lambda f: json.dump(summary, f, indent=2),
                 binary=False)
    print(f"selected {len(r)} items in {r.rounds} rounds ({r.stop_reason}) in {r.stats['seconds']:.2f} s "
          f"-> {os.path.join(args.out, 'coreset.npz')}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(out=args.out, seed=args.seed, n_openset=args.openset_size, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simcore", description="SimCore: coreset sampling from an open-set "
                                "for fine-grained self-supervised learning (CVPR 2023).")
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    d = sub.add_parser("demo", help="a selection on built-in generated features", formatter_class=fmt)
    d.add_argument("--out", default=None, help="folder to save coreset.npz in (default: do not save)")
    d.add_argument("--seed", type=int, default=0, help="data and k-means seed")
    d.add_argument("--openset-size", type=int, default=200_000, help="rows of the generated open-set")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

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
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_select)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"simcore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simcore {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
