"""Issue 10's crowded-centroid reproduction in float features (cosine), next to a spread
target: select_coreset's time as a multiple of one fused pass, its passes, and where the
time goes (plan, first pass, rounds). Centroids come from k-means and are given to
select_coreset; one pass = masked_topk (K = 64), the smaller of the medians of 3 timed
before and after each selection; medians of 3 selections.

    python benchmarks/crowded_float.py [--n 500000]        (SIMCORE_CPU_ISA=avx2 for AVX2)
"""
import argparse
import statistics
import time

import torch

from simcore_ext import cpu_isa, masked_topk, select_coreset


def world(geometry, n, d=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(n, d, generator=g)
    base = torch.randn(d, generator=g)
    if geometry == "crowded":  # the recipe: X near one point, 1% of U its relatives
        X = base + 0.3 * torch.randn(1000, d, generator=g)
        U[: n // 100] = base + 0.4 * torch.randn(n // 100, d, generator=g)
    else:
        X = torch.randn(1000, d, generator=g)
    return X, U


def median_time(fn, times=3):
    ts = []
    for _ in range(times):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500_000)
    args = ap.parse_args()
    print(f"N = {args.n}, d = 256, k = 100, cosine, kernels {cpu_isa()}, {torch.get_num_threads()} threads")
    for geometry in ("spread", "crowded"):
        X, U = world(geometry, args.n)
        C = select_coreset(X, U, k=100, budget=10, tau=None).centroids
        one_pass = lambda: masked_topk(C, U, None, 64)  # noqa: E731
        for name, budget, tau in (("1%", 0.01, None), ("5%", 0.05, None), ("stop", 50_000, 0.95)):
            before, _ = median_time(one_pass)
            t, r = median_time(lambda: select_coreset(None, U, centroids=C, budget=budget, tau=tau))
            after, _ = median_time(one_pass)
            p, s = min(before, after), r.stats
            print(f"{geometry:8s} {name:5s} {t:.3f} s = {t / p:.2f}x one pass ({p:.3f} s); "
                  f"{len(r)} items, {s['passes']} pass(es), K {s['initial_candidates']}, plan "
                  f"{s['seconds_plan'] * 1e3:.0f} ms, first pass {s['seconds_first_pass'] * 1e3:.0f} ms, "
                  f"rounds {s['seconds_rounds_and_rescans'] * 1e3:.0f} ms", flush=True)


if __name__ == "__main__":
    main()
