"""The fused pass on one CPU instruction set against the float32 GEMM ceiling of the same
instruction set, measured in the same run.

    python benchmarks/fused_isa.py --isa avx2 [--n 1000000] [--dims 128 512 2048]

`--isa avx2` runs simcore's AVX2 kernels (SIMCORE_CPU_ISA=avx2) and caps the ceiling's
libraries at AVX2 (ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2,
ONEDNN_MAX_CPU_ISA=AVX2, OPENBLAS_CORETYPE=Haswell): on an AVX-512 CPU this approximates
a CPU without AVX-512. `--isa generic` runs the portable kernels (baseline x86-64: SSE2
vectors, no FMA) against a ceiling capped at SSE4.2 (OPENBLAS_CORETYPE=Nehalem). `--isa
native` leaves every library at its best. The ceiling is the fastest of 7 rounds of a
4096^3 float32 product, the best of torch.mm (in process) and numpy.matmul (own process,
as in benchmarks/worker.py). The fused pass is masked_topk, k = 100, K = 64: the median of
5 rounds after one warm-up; GFLOP/s = 2 k N d / median. Prints a Markdown table, with the
ratio to each library too: a cap may not hold (on an AMD CPU torch's MKL ignores
MKL_ENABLE_INSTRUCTIONS=SSE4_2)."""
import argparse
import os
import statistics
import subprocess
import sys
import time

CAPS = {
    "avx2": dict(SIMCORE_CPU_ISA="avx2", ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2",
                 ONEDNN_MAX_CPU_ISA="AVX2", OPENBLAS_CORETYPE="Haswell"),
    "generic": dict(SIMCORE_CPU_ISA="generic", ATEN_CPU_CAPABILITY="default",
                    MKL_ENABLE_INSTRUCTIONS="SSE4_2", ONEDNN_MAX_CPU_ISA="SSE41",
                    OPENBLAS_CORETYPE="Nehalem"),
    "native": {},
}
K_CENTROIDS, K_CANDIDATES = 100, 64


def numpy_ceiling(rounds=7):
    code = ("import time, numpy as np\n"
            "a = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)\n"
            "a @ a; a @ a\n"
            "ts = []\n"
            f"for _ in range({rounds}):\n"
            "    t = time.perf_counter(); a @ a; ts.append(time.perf_counter() - t)\n"
            "print(min(ts))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return 2 * 4096**3 / float(out.stdout.strip()) / 1e9


def torch_ceiling(torch, rounds=7):
    a = torch.randn(4096, 4096)
    for _ in range(2):
        torch.mm(a, a)
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        torch.mm(a, a)
        ts.append(time.perf_counter() - t)
    return 2 * 4096**3 / min(ts) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--isa", choices=sorted(CAPS), required=True)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    want = CAPS[args.isa]
    if any(os.environ.get(k) != v for k, v in want.items()):  # the caps act at library load
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **want})

    import torch
    import simcore_ext

    ceil_np = numpy_ceiling()
    ceil_torch = torch_ceiling(torch)
    ceiling = max(ceil_np, ceil_torch)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"CPU {cpu}, {torch.get_num_threads()} threads, simcore kernels `{simcore_ext.cpu_isa()}`, "
          f"torch {torch.__version__}, N = {args.n}")
    print(f"float32 GEMM ceiling: torch.mm {ceil_torch:.0f} GFLOP/s, numpy.matmul {ceil_np:.0f} GFLOP/s "
          f"(caps: {' '.join(f'{k}={v}' for k, v in want.items()) or 'none'})\n")
    print("| d | dtype | median | GFLOP/s | / ceiling | / torch.mm | / numpy |\n|---|---|---|---|---|---|---|")
    for d in args.dims:
        g = torch.Generator().manual_seed(d)
        U32 = torch.randn(args.n, d, generator=g)
        C32 = torch.randn(K_CENTROIDS, d, generator=g)
        for dtype in args.dtypes:
            U, C = U32.to(getattr(torch, dtype)), C32.to(getattr(torch, dtype))
            simcore_ext.masked_topk(C, U, None, K_CANDIDATES)  # warm-up
            ts = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                simcore_ext.masked_topk(C, U, None, K_CANDIDATES)
                ts.append(time.perf_counter() - t)
            med = statistics.median(ts)
            gf = 2 * K_CENTROIDS * args.n * d / med / 1e9
            print(f"| {d} | {dtype} | {med * 1e3:.1f} ms | {gf:.0f} | {gf / ceiling:.2f} | "
                  f"{gf / ceil_torch:.2f} | {gf / ceil_np:.2f} |", flush=True)
            del U, C
        del U32, C32


if __name__ == "__main__":
    main()
