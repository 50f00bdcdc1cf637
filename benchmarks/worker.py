"""A competitor in its own process (python -m benchmarks.worker WHAT ...).

Libraries with their own thread pools (OpenBLAS in numpy, OpenMP in faiss) slow each
other down badly when they share a process with torch's pool, so each runs here, alone.
Protocol: prints "ready" once set up; each "run" line on stdin runs the operation once
and prints "done"; end of input exits. The parent times the round trip."""
import argparse
import sys

import numpy as np


def numpy_gemm(args):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, 4096), dtype=np.float32)
    return lambda: a @ a


def faiss_flat_ip(args):
    import faiss

    faiss.cvar.distance_compute_blas_threshold = 0  # always the BLAS path
    rng = np.random.default_rng(1)
    index = faiss.IndexFlatIP(args.d)
    for a in range(0, args.n, 1 << 18):  # add in pieces: the index keeps its own copy
        index.add(rng.standard_normal((min(1 << 18, args.n - a), args.d), dtype=np.float32))
    q = rng.standard_normal((args.k, args.d), dtype=np.float32)
    return lambda: index.search(q, args.K)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["numpy_gemm", "faiss_flat_ip"])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--K", type=int, default=64)
    args = p.parse_args()
    run = globals()[args.what](args)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            run()
            print("done", flush=True)


if __name__ == "__main__":
    main()
