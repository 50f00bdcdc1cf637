"""How well a retrieval encoder lets SimCore find the target's relatives, on real photos
(tinyopenssl: six dog breeds as X, the 50,300-image open-set as U), with no training:

    python benchmarks/retrieval_precision.py --data-dir ../shared/data/tinyopenssl \
        --encoder efficientnet-lite0 --size 128 [--k 10 30 100 300] [--whiten 0 512]

For each encoder (any simcore.encoders spec: a simcore checkpoint, torchvision:NAME[:FILE],
efficientnet-lite0) it extracts X's and U's features (resumable, in --work-dir), then
selects SimCore coresets (1%, 5%, and the stop criterion; every --k) and, of the same
sizes, the reference samplers (nearest to any X image, nearest to X's mean) and random;
and reports each one's precision: the share of the coreset in openset_classes.tsv's
`target-class` and `dog` groups (the whole open-set: 6.4%). With --whiten D the same features
are first PCA-whitened to D dimensions, fitted on U's (simcore.whiten; 0: raw), and every
sampler reads the whitened rows. Writes
benchmarks/results/retrieval_precision.{json,md} (one entry per encoder and size, merged
with earlier runs). Note: Tiny-ImageNet's images come from ImageNet's training set, so an
ImageNet-trained encoder has seen the open-set's photos (with labels): an upper bound."""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from openssl_table import _folders, _groups, _write_json, precision
from simcore.encoders import load_encoder
from simcore.extract import extract
from simcore.samplers import nearest_to_mean, nearest_to_target
from simcore.whiten import fit_whitening, whiten_file
from simcore_ext import select_coreset

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def measure(args, spec, size, whiten, group_of, x_dir, openset_dir):
    tag = f"{spec.replace('/', '_').replace(':', '_')}-{size}px" + ("" if args.amp == "off" else f"-{args.amp}")
    work = os.path.join(args.work_dir, tag)
    os.makedirs(work, exist_ok=True)
    t0 = time.perf_counter()
    encoder = load_encoder(spec, size)
    feats = {}
    for name, data in (("X", x_dir), ("U", openset_dir)):
        out = os.path.join(work, f"{name}.npy")
        if not os.path.exists(out):
            extract(encoder, data, out, dtype="float16", cache_dir=args.cache_dir, progress=True,
                    workers=args.workers, batch_size=args.batch_size, chunk_rows=2048, amp=args.amp)
        feats[name] = out
    extract_s = time.perf_counter() - t0
    with open(os.path.join(work, "U.paths.txt")) as f:
        folders = _folders([line.rstrip("\n") for line in f], openset_dir)
    X, U = np.load(feats["X"]).astype(np.float32), feats["U"]
    t1 = time.perf_counter()
    if whiten:  # fitted on the open-set's features only; the whitened U is written once, streamed
        w = fit_whitening([feats["U"]], whiten, progress=True)
        X, U = w.apply(X), os.path.join(work, f"U.white{whiten}.npy")
        whiten_file(feats["U"], U, w)
    whiten_s = time.perf_counter() - t1
    N = len(folders)
    rows = {}
    for k in args.k:
        for label, budget, tau in (("1%", 0.01, None), ("5%", 0.05, None), ("stop", None, 0.95)):
            r = select_coreset(X, U, k=k, budget=budget, tau=tau, seed=args.seed, progress=False)
            rows[f"SimCore k={k} ({label})"] = dict(items=len(r), **precision(r.indices.numpy(), folders, group_of))
    for label, items in (("1%", round(0.01 * N)), ("5%", round(0.05 * N))):
        for name, fn in (("nearest to X", nearest_to_target), ("nearest to mean", nearest_to_mean)):
            rows[f"{name} ({label})"] = dict(items=items, **precision(fn(X, U, items), folders, group_of))
        rng = np.random.default_rng(args.seed)
        rows[f"random ({label})"] = dict(items=items, **precision(rng.choice(N, items, replace=False), folders, group_of))
    return dict(encoder=spec, size=size, whiten=whiten, amp=args.amp, dim=encoder.dim, identity=encoder.identity, extract_seconds=round(extract_s, 1),
                whiten_seconds=round(whiten_s, 1),
                rows=rows)


def _cpu() -> str:
    try:
        info = open("/proc/cpuinfo").read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        return f"{name} ({'AVX-512' if ' avx512f' in info else 'AVX2' if ' avx2' in info else 'no AVX2'})"
    except (OSError, StopIteration):
        return platform.machine()


def table(results) -> list:
    lines = []
    for key, r in results.items():
        white = f", PCA-whitened to {r['whiten']}" if r.get("whiten") else ""
        white += ", extracted under bf16 autocast" if r.get("amp", "off") != "off" else ""
        lines += [f"### {r['encoder']} at {r['size']} px ({r['dim']}-d features{white})", "",
                  "| sampler | items | precision | target-class | dog | animal | other |", "|---|---|---|---|---|---|---|"]
        for name, v in r["rows"].items():
            lines.append(f"| {name} | {v['items']:,} | **{v['precision']:.1f}%** | {v.get('target-class', 0):.1f}% | "
                         f"{v.get('dog', 0):.1f}% | {v.get('animal', 0):.1f}% | {v.get('other', 0):.1f}% |")
        done = (f"Whitening fitted and applied in {r['whiten_seconds']:.0f} s (the features: above)"
                if r.get("whiten") else f"Features extracted in {r['extract_seconds']:.0f} s")
        lines += ["", f"{done} ({r.get('machine', '?')}).", ""]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="the tinyopenssl folder")
    ap.add_argument("--encoder", nargs="+", default=["efficientnet-lite0"], help="simcore.encoders specs")
    ap.add_argument("--size", type=int, nargs="+", default=[128], help="input sizes (each encoder at each)")
    ap.add_argument("--k", type=int, nargs="+", default=[100])
    ap.add_argument("--whiten", type=int, nargs="+", default=[0],
                    help="PCA-whitening dimensions to measure (0: the raw features)")
    ap.add_argument("--amp", choices=["off", "bf16", "auto"], default="off",
                    help="extract under bfloat16 autocast (simcore extract --amp)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=-1)
    ap.add_argument("--batch-size", type=int, default=64, help="extraction batch (small is faster on CPUs)")
    ap.add_argument("--work-dir", default=os.path.expanduser("~/.cache/simcore/retrieval_precision"))
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=os.path.join(RESULTS, "retrieval_precision"), help="output prefix")
    args = ap.parse_args()
    x_dir, openset_dir = os.path.join(args.data_dir, "dogs", "train"), os.path.join(args.data_dir, "openset")
    group_of = _groups(args.data_dir)
    results = {}
    if os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as f:
            results = json.load(f)
    machine = f"{_cpu()}, {torch.get_num_threads()} threads"
    for spec in args.encoder:
        for size in args.size:
            for whiten in args.whiten:
                r = measure(args, spec, size, whiten, group_of, x_dir, openset_dir)
                r["machine"] = machine
                results[f"{spec}@{size}" + ("" if args.amp == "off" else f"-{args.amp}")
                        + (f"+white{whiten}" if whiten else "")] = r
                _write_json(results, args.out + ".json")
                print("\n".join(table({0: r})))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md.tmp", "w") as f:
        f.write("\n".join(["# Retrieval encoders: SimCore's precision on tinyopenssl", "",
                           "Precision = share of the selection in the open-set's `target-class` and `dog` groups "
                           "(whole open-set: 6.4%). `python benchmarks/retrieval_precision.py --data-dir DATA "
                           "--encoder SPEC --size PX`.", ""] + table(results)) + "\n")
    os.replace(args.out + ".md.tmp", args.out + ".md")


if __name__ == "__main__":
    main()
