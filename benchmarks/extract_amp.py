"""Feature extraction in float32 against bf16 autocast (`simcore extract --amp bf16`,
`simcore run --retrieval-amp bf16`): images/s and how close the features are.

    python benchmarks/extract_amp.py --data ../shared/data/tinyopenssl/dogs/train \
        --encoder efficientnet-lite0@128 efficientnet-lite2@224

Each encoder extracts the same images twice in this process, float32 first (its first
pass also warms the image cache), then each mode again for the timing: the second run of
each counts. Prints and writes benchmarks/results/extract_amp.{json,md}: images/s per
mode, the speed-up, and the cosine between each image's float32 and bf16 features (min
and mean)."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from simcore.encoders import load_encoder
from simcore.extract import extract

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _cpu() -> str:
    try:
        info = open("/proc/cpuinfo").read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        bf16 = "avx512_bf16" in info or "amx_bf16" in info
        return f"{name} ({'AVX512-BF16' if bf16 else 'no native bf16'})"
    except (OSError, StopIteration):
        return "unknown CPU"


def measure(spec: str, size: int, data: str, tmp: str, batch_size: int, workers: int) -> dict:
    encoder = load_encoder(spec, size)
    feats, speed = {}, {}
    for mode in ("off", "bf16", "off", "bf16"):  # the second run of each mode is timed
        out = os.path.join(tmp, f"{mode}.npy")
        if os.path.exists(out):
            os.remove(out)
        t0 = time.perf_counter()
        extract(encoder, data, out, dtype="float32", batch_size=batch_size, progress=False, workers=workers,
                cache_dir=os.path.join(tmp, "cache"), amp=mode)
        seconds = time.perf_counter() - t0
        feats[mode] = np.load(out)
        speed[mode] = feats[mode].shape[0] / seconds
    a, b = feats["off"].astype(np.float64), feats["bf16"].astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return dict(encoder=spec, size=size, images=int(a.shape[0]), fp32_img_s=round(speed["off"], 1),
                bf16_img_s=round(speed["bf16"], 1), speedup=round(speed["bf16"] / speed["off"], 2),
                cosine_min=float(cos.min()), cosine_mean=float(cos.mean()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="images to extract (a folder tree or a .txt list)")
    ap.add_argument("--encoder", nargs="+", default=["efficientnet-lite0@128", "efficientnet-lite2@224"],
                    help="SPEC@SIZE (simcore.encoders specs)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(RESULTS, "extract_amp"), help="output prefix")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.encoder:
            spec, _, size = item.rpartition("@")
            rows.append(measure(spec, int(size), args.data, tmp, args.batch_size, args.workers))
            print(json.dumps(rows[-1]), flush=True)
    machine = f"{_cpu()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = ["# Feature extraction: float32 against bf16 autocast", "",
             f"`python benchmarks/extract_amp.py --data {args.data}`; {machine}. Second run of each mode "
             "timed (batch {}, {} loader worker(s)).".format(args.batch_size, args.workers), "",
             "| encoder | px | images | float32 img/s | bf16 img/s | speed-up | cosine fp32 vs bf16 (min / mean) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['encoder']} | {r['size']} | {r['images']:,} | {r['fp32_img_s']} | {r['bf16_img_s']} | "
              f"{r['speedup']}x | {r['cosine_min']:.4f} / {r['cosine_mean']:.5f} |" for r in rows]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json.tmp", "w") as f:
        json.dump(dict(machine=machine, rows=rows), f, indent=2)
    os.replace(args.out + ".json.tmp", args.out + ".json")
    with open(args.out + ".md.tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(args.out + ".md.tmp", args.out + ".md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
