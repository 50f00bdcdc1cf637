"""The fused pass (masked_topk, k=100, K=64) against chunked torch mm+topk, faiss-cpu's
IndexFlatIP (BLAS path, own process) and the machine's GEMM ceiling in the same run.
GFLOP/s = 2 k N d / median time; the report divides by the same-dtype ceiling."""
import importlib.util

import pytest
import torch

from simcore_ext import masked_topk
from baselines import torch_chunked_topk
from conftest import N, Worker

K_CENTROIDS, K_CANDIDATES = 100, 64
DIMS = [128, 512, 2048]
DTYPES = ["float32", "bfloat16"]


def data(cache, d, dtype):
    def make():
        g = torch.Generator().manual_seed(d)
        C = torch.randn(K_CENTROIDS, d, generator=g).to(getattr(torch, dtype))
        U = torch.empty(N, d, dtype=getattr(torch, dtype))
        for a in range(0, N, 1 << 16):  # in pieces: no float32 copy of a bfloat16 U
            U[a : a + (1 << 16)] = torch.randn(min(1 << 16, N - a), d, generator=g)
        return C, U
    return cache.get(("fused", d, dtype), make)


def info(benchmark, d, dtype, impl):
    benchmark.group = f"fused d={d} {dtype}"
    benchmark.extra_info.update(kind="fused", d=d, dtype=dtype, impl=impl, n=N,
                                flops=2 * K_CENTROIDS * N * d)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_ceiling_torch(benchmark, dtype):
    a = torch.randn(4096, 4096).to(getattr(torch, dtype))
    benchmark.group = "gemm ceiling"
    benchmark.extra_info.update(kind="ceiling", dtype=dtype, impl="torch.mm", flops=2 * 4096**3)
    benchmark.pedantic(torch.mm, (a, a), rounds=7, warmup_rounds=2)


def test_gemm_ceiling_numpy(benchmark, cache):
    cache.clear()
    w = Worker("numpy_gemm")
    benchmark.group = "gemm ceiling"
    benchmark.extra_info.update(kind="ceiling", dtype="float32", impl="numpy.matmul (own process)",
                                flops=2 * 4096**3)
    try:
        benchmark.pedantic(w.run, rounds=7, warmup_rounds=2)
    finally:
        w.close()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
def test_fused_simcore(benchmark, cache, d, dtype):
    C, U = data(cache, d, dtype)
    info(benchmark, d, dtype, "simcore masked_topk")
    benchmark.pedantic(masked_topk, (C, U, None, K_CANDIDATES), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
def test_fused_torch_mm_topk(benchmark, cache, d, dtype):
    C, U = data(cache, d, dtype)
    info(benchmark, d, dtype, "torch chunked mm+topk")
    v, i = benchmark.pedantic(torch_chunked_topk, (C, U, K_CANDIDATES), rounds=3, warmup_rounds=1)
    ours_v, ours_i = masked_topk(C, U, None, K_CANDIDATES)  # same answer up to rounding
    if dtype == "bfloat16":  # torch rounds bfloat16 products' sums to bfloat16
        torch.testing.assert_close(v.float(), ours_v, rtol=2**-7, atol=2**-7)
    else:
        torch.testing.assert_close(v, ours_v, rtol=0, atol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu not installed")
@pytest.mark.parametrize("d", DIMS)
def test_fused_faiss(benchmark, cache, d):
    cache.clear()  # the worker holds its own copy of U
    w = Worker("faiss_flat_ip", "--n", N, "--d", d, "--k", K_CENTROIDS, "--K", K_CANDIDATES)
    info(benchmark, d, "float32", "faiss IndexFlatIP (own process)")
    try:
        benchmark.pedantic(w.run, rounds=3, warmup_rounds=1)
    finally:
        w.close()
