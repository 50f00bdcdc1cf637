"""GPU throughput (skipped without CUDA): masked_topk on N rows of bfloat16 held on the
GPU and streamed from pinned host memory, against chunked torch mm+topk and the card's
measured ceilings (device-to-device copy, bf16 GEMM, host-to-device copy), all in the
same process. Run by benchmarks/gpu_check.sh; benchmarks/gpu_report.py makes the table.

GPU_BENCH_N rows (default 10M; the 10M x 2048 bf16 open-set takes 41 GB on the GPU and
41 GB of pinned host memory)."""
import os
import time

import pytest
import torch

import simcore_ext
from simcore_ext import masked_topk, openset_topk, select_coreset
from baselines import torch_chunked_topk

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and simcore_ext.with_cuda()), reason="needs a CUDA GPU and a CUDA build")

N = int(os.environ.get("GPU_BENCH_N", 10_000_000))
D_MAX = 2048
K = 64  # candidates per centroid


def synced(fn, *args, **kw):
    def run():
        out = fn(*args, **kw)
        torch.cuda.synchronize()
        return out
    return run


@pytest.fixture(scope="module")
def openset():
    """N x 2048 bf16 on the GPU and a pinned host copy; d < 2048 uses the first N*d values."""
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = torch.empty(N, D_MAX, dtype=torch.bfloat16, device="cuda")
    for a in range(0, N, 1 << 18):
        dev[a:a + (1 << 18)] = torch.randn(min(1 << 18, N - a), D_MAX, device="cuda", generator=g)
    host = torch.empty(N, D_MAX, dtype=torch.bfloat16, pin_memory=True)
    host.copy_(dev)
    torch.cuda.synchronize()
    yield dev, host
    del dev, host
    torch.cuda.empty_cache()


def rows(t, d):
    return t.view(-1)[: N * d].view(N, d)


def centroids(k, d):
    g = torch.Generator(device="cuda").manual_seed(k + d)
    return torch.randn(k, d, device="cuda", generator=g).to(torch.bfloat16)


def info(benchmark, kind, **extra):
    benchmark.extra_info.update(kind=kind, n=N, device=torch.cuda.get_device_name(), **extra)


def test_ceiling_copy(benchmark):
    a = torch.empty(1 << 31, dtype=torch.uint8, device="cuda")  # 2 GiB
    b = torch.empty_like(a)
    benchmark.group = "ceilings"
    info(benchmark, "copy", bytes=2 * a.numel())  # read + written
    benchmark.pedantic(synced(b.copy_, a), rounds=20, warmup_rounds=3)


def test_ceiling_gemm(benchmark):
    g = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(8192, 8192, device="cuda", generator=g).to(torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", generator=g).to(torch.bfloat16)
    benchmark.group = "ceilings"
    info(benchmark, "gemm", flops=2 * 8192**3)
    benchmark.pedantic(synced(torch.mm, a, b), rounds=20, warmup_rounds=3)


def test_ceiling_h2d(benchmark, openset):
    src = rows(openset[1], D_MAX)[: (1 << 30) // (2 * D_MAX)]  # 1 GiB of the pinned open-set
    dst = torch.empty_like(src, device="cuda")
    benchmark.group = "ceilings"
    info(benchmark, "h2d", bytes=src.numel() * 2)
    benchmark.pedantic(synced(dst.copy_, src, non_blocking=True), rounds=10, warmup_rounds=2)


KERNELS = ["mma", "wgmma"]


@pytest.mark.parametrize("d", [512, 2048])
@pytest.mark.parametrize("k", [100, 1000])
@pytest.mark.parametrize("impl", ["simcore mma", "simcore wgmma", "torch"])
def test_topk_on_device(benchmark, openset, impl, k, d, monkeypatch):
    U, C = rows(openset[0], d), centroids(k, d)
    benchmark.group = f"device k={k} d={d}"
    info(benchmark, "device", impl=impl, k=k, d=d, K=K, bytes=N * d * 2, flops=2 * k * N * d)
    if impl.startswith("simcore"):
        monkeypatch.setenv("SIMCORE_CUDA_KERNEL", impl.split()[1])
        fn = synced(masked_topk, C, U, None, K)
        rounds = 5
    else:
        fn = synced(torch_chunked_topk, C, U, K, chunk=1 << 18)
        rounds = 2
    v, i = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
    if impl.startswith("simcore"):  # the same best candidate as torch's, within bf16 GEMM rounding
        tv, ti = torch_chunked_topk(C, U, K, chunk=1 << 18)
        assert torch.equal(i[:, 0], ti[:, 0]) or torch.allclose(v[:, 0], tv[:, 0], rtol=1e-2)


@pytest.mark.parametrize("d", [512, 2048])
@pytest.mark.parametrize("k", [100, 1000])
def test_topk_streamed_from_pinned_host(benchmark, openset, k, d):
    # with the default kernel (SIMCORE_CUDA_KERNEL as set for the run)
    U, C = rows(openset[1], d), centroids(k, d)
    benchmark.group = f"host k={k} d={d}"
    info(benchmark, "host", impl="simcore", k=k, d=d, K=K, bytes=N * d * 2, flops=2 * k * N * d)
    v, i = benchmark.pedantic(synced(openset_topk, C, U, K, device="cuda"), rounds=2, warmup_rounds=1)
    vd, id_ = masked_topk(C, rows(openset[0], d), None, K)  # same kernel on the device copy
    assert torch.equal(i, id_.cpu()) and torch.equal(v, vd.cpu())


VARIANTS = {  # (kernel, tile rows, stages); wgmma 128x3 is the default on sm_90
    "wgmma 128x3": ("wgmma", 128, 3), "wgmma 128x4": ("wgmma", 128, 4),
    "wgmma 256x3": ("wgmma", 256, 3), "mma 128x3": ("mma", 128, 3),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("Kc", [1, 64, 1024, 4096])
@pytest.mark.parametrize("k", [100, 1000])
def test_candidates_and_variants(benchmark, openset, k, Kc, variant, monkeypatch):
    if Kc != 64 and variant not in ("wgmma 128x3", "mma 128x3"):
        pytest.skip("K sweep with the main variants only")
    d = 2048
    U, C = rows(openset[0], d), centroids(k, d)
    kernel, tile, stages = VARIANTS[variant]
    monkeypatch.setenv("SIMCORE_CUDA_KERNEL", kernel)
    monkeypatch.setenv("SIMCORE_CUDA_TILE_ROWS", str(tile))
    monkeypatch.setenv("SIMCORE_CUDA_STAGES", str(stages))
    benchmark.group = f"K and kernel variant, k={k} d=2048"
    info(benchmark, "sweep", impl=variant, k=k, d=d, K=Kc, bytes=N * d * 2, flops=2 * k * N * d)
    benchmark.pedantic(synced(masked_topk, C, U, None, Kc), rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("kernel", KERNELS)
def test_select_coreset_on_device(benchmark, openset, kernel, monkeypatch):
    monkeypatch.setenv("SIMCORE_CUDA_KERNEL", kernel)
    k, d = 100, 2048
    U = rows(openset[0], d)
    X = rows(openset[0], d)[:2000].float() + 0.5  # a "target" near a corner of U
    benchmark.group = "select_coreset"
    info(benchmark, "select", impl=kernel, k=k, d=d, bytes=N * d * 2,
         flops=2 * k * N * d)
    r = benchmark.pedantic(synced(select_coreset, X, U, k=k, budget=0.01, tau=None),
                           rounds=2, warmup_rounds=1)
    benchmark.extra_info.update(passes=r.stats["passes"], rounds=len(r.round_sizes),
                                first_pass_s=r.stats["seconds_first_pass"])


@pytest.fixture(scope="module")
def crowded():
    """Issue 10's crowded case on the device: a fine-grained target (X near one point) and
    1% of U its relatives, spread over U; d = 256, bf16."""
    g = torch.Generator(device="cuda").manual_seed(1)
    U = torch.randn(N, 256, device="cuda", generator=g).to(torch.bfloat16)
    base = torch.randn(256, device="cuda", generator=g)
    rel = torch.randperm(N, device="cuda", generator=g)[: N // 100]
    U[rel] = (base + 0.4 * torch.randn(rel.numel(), 256, device="cuda", generator=g)).to(torch.bfloat16)
    X = base + 0.3 * torch.randn(1000, 256, device="cuda", generator=g)
    yield X, U
    del U
    torch.cuda.empty_cache()


@pytest.mark.parametrize("budget", ["1%", "5%", "stop"])
def test_select_crowded_on_device(benchmark, crowded, budget):
    X, U = crowded
    C = select_coreset(X, U, k=100, budget=10, tau=None).centroids.cuda().to(torch.bfloat16)
    b, tau = {"1%": (0.01, None), "5%": (0.05, None), "stop": (None, 0.95)}[budget]

    def one_pass():
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            synced(masked_topk, C, U, None, K)()
            ts.append(time.perf_counter() - t)
        return sorted(ts)[1]

    before = one_pass()
    benchmark.group = "select_coreset, crowded centroids"
    r = benchmark.pedantic(synced(select_coreset, None, U, centroids=C, budget=b or 50_000, tau=tau),
                           rounds=3, warmup_rounds=1)
    info(benchmark, "select_crowded", impl="default kernel", k=100, d=256, budget=budget,
         one_pass=min(before, one_pass()), passes=r.stats["passes"], items=len(r),
         rounds=len(r.round_sizes), first_candidates=r.stats["initial_candidates"])
