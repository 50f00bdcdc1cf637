"""The CUDA kernels against the float64 reference and against themselves: tensor-core and
CUDA-core paths, aligned and unaligned rows, both tile widths, both compactions, the
overflow retries, position independence, and select_coreset on the GPU with U on the GPU,
in host memory (pinned, double-buffered streaming), in a memmap and in a .npy file.
Skipped without a GPU and a CUDA build."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import simcore_ext
from simcore_ext import select_coreset
from simcore_ext.planner import Plan
from simcore_ext.reference import reference_select
from conftest import DTYPES
from oracle_check import assert_valid, assert_valid_topk

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and simcore_ext.with_cuda()), reason="needs a CUDA GPU and a CUDA build")

ops = torch.ops.simcore
CUDA_DTYPES = [pytest.param(t, id=str(t).replace("torch.", "")) for t in DTYPES]


def ints(g, rows, d, lo=-3, hi=3):
    return torch.randint(lo, hi + 1, (rows, d), generator=g).float()


def topk(C, U, ex, K, dtype):
    return ops.masked_topk(C.to("cuda", dtype), U.to("cuda", dtype),
                           None if ex is None else ex.cuda(), K)


@settings(max_examples=60)
@given(k=st.integers(1, 300), n=st.integers(0, 3000), d=st.integers(1, 160),
       K=st.integers(0, 700), frac=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       dup=st.booleans(), dtype=st.sampled_from(DTYPES))
def test_masked_topk_hypothesis_exact(k, n, d, K, frac, seed, dup, dtype):
    g = torch.Generator().manual_seed(seed)
    C, U = ints(g, k, d), ints(g, n, d)
    if dup and n > 1:  # duplicate rows: ties go to the smaller index
        U[n // 2:] = U[: n - n // 2].clone()
    ex = torch.rand(n, generator=g) < frac
    v, i = topk(C, U, ex, K, dtype)
    assert v.is_cuda and v.shape == (k, K) and i.dtype == torch.int64
    assert_valid_topk(v, i, C, U, ex, K, exact=True)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("k,n,d,K", [(1, 1, 1, 1), (128, 1000, 64, 1), (129, 2000, 72, 100),
                                     (1000, 3000, 128, 64), (7, 20000, 16, 4096),
                                     (5, 9000, 24, 5000), (3, 700, 2048, 200)])
def test_masked_topk_exact_shapes(dtype, k, n, d, K):
    g = torch.Generator().manual_seed(k + n + d + K)
    C, U = ints(g, k, d, -2, 2), ints(g, n, d, -2, 2)
    ex = torch.rand(n, generator=g) < 0.3
    v, i = topk(C, U, ex, K, dtype)
    assert_valid_topk(v, i, C, U, ex, K, exact=True)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("K", [1, 40, 700])
def test_adversarial_orders_force_overflow_retries(dtype, K):
    """Scores that rise with the row index fill every wave's buffer past its room: the
    retries with smaller waves must still give the exact answer. Row i = (i // 256,
    i % 256, ...): exact in every dtype; centroid 0 scores i, centroid 1 scores -i,
    centroid 2 scores i // 256 (bursts of 256 equal scores, as class-ordered open-sets)."""
    n, d = 30000, 8
    i = torch.arange(n)
    U = torch.zeros(n, d)
    U[:, 0], U[:, 1], U[:, 2] = (i // 256).float(), (i % 256).float(), 1.0
    C = torch.zeros(4, d)
    C[0, :2] = torch.tensor([256.0, 1.0])
    C[1, :2] = torch.tensor([-256.0, -1.0])
    C[2, 0] = 1.0
    C[3] = ints(torch.Generator().manual_seed(2), 1, d)[0]
    v, idx = topk(C, U, None, K, dtype)
    assert_valid_topk(v, idx, C, U, None, K, exact=True)
    assert torch.equal(idx[0].cpu(), torch.arange(n - 1, n - 1 - K, -1))


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_random_data_within_rounding(dtype):
    g = torch.Generator().manual_seed(1)
    C, U = torch.randn(300, 203, generator=g).to(dtype), torch.randn(20000, 203, generator=g).to(dtype)
    ex = torch.rand(20000, generator=g) < 0.5
    v, i = ops.masked_topk(C.cuda(), U.cuda(), ex.cuda(), 300)
    assert_valid_topk(v, i, C, U, ex, 300)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_scores_are_position_independent(dtype):
    """Bit-identical scores whatever the wave, slice, permutation, tile width, alignment
    or compaction: what keeps rescans and chunked streaming exact on the GPU."""
    g = torch.Generator().manual_seed(3)
    C = torch.randn(150, 96, generator=g).to(dtype).cuda()
    U = torch.randn(5000, 96, generator=g).to(dtype).cuda()
    v, i = ops.masked_topk(C, U, None, 5000)
    full = torch.empty(150, 5000, device="cuda").scatter_(1, i, v)
    for a, b in [(0, 64), (1, 2), (100, 4999), (640, 3001)]:
        vc, ic = ops.masked_topk(C, U[a:b], None, b - a)
        part = torch.empty(150, b - a, device="cuda").scatter_(1, ic, vc)
        assert torch.equal(part, full[:, a:b])
    perm = torch.randperm(5000, generator=g).cuda()
    vp, ip = ops.masked_topk(C, U[perm], None, 5000)
    assert torch.equal(torch.empty_like(full).scatter_(1, perm[ip], vp), full)
    wide = torch.zeros(5000, 101, dtype=dtype, device="cuda")
    wide[:, :96] = U  # row stride 101: the unaligned load path
    vu, iu = ops.masked_topk(C, wide[:, :96], None, 5000)
    assert torch.equal(vu, v) and torch.equal(iu, i)
    sub = torch.tensor([149, 3, 77], device="cuda")
    vs, is_ = ops.masked_topk(C[sub], U, None, 5000)
    assert torch.equal(vs, v[sub]) and torch.equal(is_, i[sub])


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("env", [("SIMCORE_CUDA_TILE_ROWS", "256"), ("SIMCORE_CUDA_STAGES", "4"),
                                 ("SIMCORE_CUDA_ATEN_COMPACT", "1")])
def test_variants_agree_bitwise(dtype, env, monkeypatch):
    g = torch.Generator().manual_seed(4)
    C = torch.randn(200, 136, generator=g).to(dtype).cuda()
    U = torch.randn(40000, 136, generator=g).to(dtype).cuda()
    ex = (torch.rand(40000, generator=g) < 0.2).cuda()
    for K in (1, 64, 1500):
        v, i = ops.masked_topk(C, U, ex, K)
        with monkeypatch.context() as m:
            m.setenv(*env)
            v2, i2 = ops.masked_topk(C, U, ex, K)
        assert torch.equal(v, v2) and torch.equal(i, i2)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("kernel", ["mma", "wgmma"])
def test_tensor_core_kernels_agree_on_integer_data(dtype, kernel, monkeypatch):
    if kernel == "wgmma" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("wgmma needs an sm_90 GPU")
    monkeypatch.setenv("SIMCORE_CUDA_KERNEL", kernel)
    g = torch.Generator().manual_seed(12)
    C, U = ints(g, 300, 200), ints(g, 50000, 200)
    ex = torch.rand(50000, generator=g) < 0.1
    v, i = topk(C, U, ex, 100, dtype)
    assert_valid_topk(v, i, C, U, ex, 100, exact=True)


def test_kernel_choice_errors(monkeypatch):
    monkeypatch.setenv("SIMCORE_CUDA_KERNEL", "tf32")
    with pytest.raises(ValueError, match="SIMCORE_CUDA_KERNEL"):
        ops.masked_topk(torch.randn(2, 8, device="cuda").half(), torch.randn(5, 8, device="cuda").half(), None, 1)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_matches_cpu_on_integer_data(dtype):
    g = torch.Generator().manual_seed(5)
    C, U = ints(g, 33, 40), ints(g, 4000, 40)
    ex = torch.rand(4000, generator=g) < 0.1
    vc, ic = ops.masked_topk(C.to(dtype), U.to(dtype), ex, 77)
    vg, ig = topk(C, U, ex, 77, dtype)
    assert torch.equal(vg.cpu(), vc) and torch.equal(ig.cpu(), ic)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_scan_topk_floor_and_norms(dtype):
    g = torch.Generator().manual_seed(6)
    C = torch.nn.functional.normalize(torch.randn(20, 64, generator=g), dim=1).to(dtype)
    U = (torch.randn(3000, 64, generator=g) * torch.rand(3000, 1, generator=g) * 5 + 0.01).to(dtype)
    v, i, norms = ops.scan_topk(C.cuda(), U.cuda(), None, 50, True)
    torch.testing.assert_close(norms.cpu().double(), U.double().norm(dim=1), rtol=1e-6, atol=0)
    Un = U.double() / U.double().norm(dim=1, keepdim=True)
    assert_valid_topk(v, i, C.double(), Un, None, 50)
    floor = v[:, 9].contiguous()  # only scores strictly above the 10th best
    vf, i_f, nf = ops.scan_topk(C.cuda(), U.cuda(), None, 50, True, floor)
    assert torch.equal(nf, norms)
    assert torch.equal(vf[:, :9], v[:, :9]) and torch.equal(i_f[:, :9], i[:, :9])
    assert torch.all(vf[:, 9:] == float("-inf")) and torch.all(i_f[:, 9:] == -1)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("share", [0.01, 0.9])
def test_facility_location(dtype, share):
    g = torch.Generator().manual_seed(7)
    C, U = ints(g, 10, 20).to(dtype), ints(g, 900, 20).to(dtype)
    sel = torch.rand(900, generator=g) < share
    f = ops.facility_location(C.cuda(), U.cuda(), sel.cuda())
    ref = (C.double() @ U.double().T)[:, sel].max(1).values
    assert torch.equal(f.cpu().double(), ref)


def test_nan_rows_never_returned():
    U = torch.randn(500, 32)
    U[::7] = float("nan")
    v, i = ops.masked_topk(torch.randn(4, 32).cuda(), U.cuda(), None, 500)
    got = i[i >= 0].cpu()
    assert (got % 7 != 0).all() and got.numel() == 4 * (500 - 72)


def test_empty_and_missing():
    C, U = torch.randn(3, 8).cuda(), torch.randn(5, 8).cuda()
    v, i = ops.masked_topk(C, U, torch.ones(5, dtype=torch.bool, device="cuda"), 4)
    assert torch.all(v == float("-inf")) and torch.all(i == -1)
    v, i = ops.masked_topk(C, U, None, 7)
    assert (i[:, :5] >= 0).all() and (i[:, 5:] == -1).all()
    assert ops.masked_topk(C, U, None, 0)[0].shape == (3, 0)
    assert torch.all(ops.masked_topk(C, U[:0], None, 2)[1] == -1)
    with pytest.raises(RuntimeError, match="same device"):
        ops.masked_topk(C.cpu(), U, None, 2)


# ---- select_coreset on the GPU

def make(seed, n, N, d):
    g = torch.Generator().manual_seed(seed)
    X, U = ints(g, n, d), ints(g, N, d)
    U[torch.randint(0, N, (N // 3,), generator=g)] = U[torch.randint(0, N, (N // 3,), generator=g)].clone()
    U[(U == 0).all(1)] = 1.0
    return X, U


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 30), N=st.integers(1, 2000),
       d=st.integers(1, 40), budget=st.one_of(st.none(), st.integers(1, 500)),
       tau=st.sampled_from([None, 0.95]), chunk=st.sampled_from([None, 1, 300]),
       dtype=st.sampled_from(DTYPES))
def test_select_on_gpu_matches_oracle(seed, n, N, d, budget, tau, chunk, dtype):
    X, U = make(seed, n, N, d)
    kw = dict(k=n, budget=budget, tau=tau, patience=3, metric="dot")
    r = select_coreset(X.to(dtype).cuda(), U.to(dtype).cuda(), chunk_size=chunk, **kw)
    assert r.params["device"].startswith("cuda")
    assert torch.equal(r.indices, reference_select(X, U, **kw).indices)  # integers: exact


@pytest.mark.parametrize("source", ["pinned", "pageable", "memmap", "npy", "shards"])
def test_host_streaming_equals_device_resident(source, tmp_path):
    g = torch.Generator().manual_seed(8)
    X, U = torch.randn(60, 48, generator=g), torch.randn(20000, 48, generator=g)
    kw = dict(k=10, budget=700, metric="cosine", tau=0.95, patience=5)
    want = select_coreset(X.cuda(), U.cuda(), chunk_size=3000, **kw)
    if source == "pinned":
        src = U.pin_memory()
    elif source == "pageable":
        src = U
    elif source in ("memmap", "npy"):
        np.save(tmp_path / "u.npy", U.numpy())
        src = np.load(tmp_path / "u.npy", mmap_mode="r") if source == "memmap" else tmp_path / "u.npy"
    else:
        src = [U[:7001], U[7001:7002].numpy(), U[7002:]]
    got = select_coreset(X, src, device="cuda", chunk_size=3000, **kw)
    assert torch.equal(got.indices, want.indices)
    assert torch.equal(got.round_scores, want.round_scores)
    assert_valid(got, U, "cosine", 700, 0.95, 5)


def test_select_rescans_on_gpu(monkeypatch):
    import simcore_ext.select as select_mod
    X, U = make(9, 12, 5000, 16)
    kw = dict(k=12, budget=900, metric="dot", tau=None)
    monkeypatch.setattr(select_mod, "plan_first_pass", lambda *a: Plan(K=2))
    r = select_coreset(X.cuda(), U.cuda(), **kw)
    assert r.stats["passes"] > 2
    assert torch.equal(r.indices, reference_select(X, U, **kw).indices)


def test_select_bad_rows_on_gpu():
    X, U = torch.randn(5, 8), torch.randn(100, 8)
    U[37] = float("inf")
    with pytest.raises(ValueError, match="row 37"):
        select_coreset(X, U.cuda(), k=2)
    with pytest.raises(ValueError, match="row 37"):
        select_coreset(X, U, k=2, device="cuda", chunk_size=10)


@pytest.mark.parametrize("geometry", ["crowded", "identical", "duplicates"])
@pytest.mark.parametrize("budget,tau", [(0.01, None), (0.05, None), (None, 0.95)])
def test_select_crowded_on_gpu_takes_few_passes_and_is_exact(geometry, budget, tau, monkeypatch):
    """Issue 10's geometries on the GPU: at most two passes, and (integer-valued features,
    metric dot: every score exact) the oracle's indices, the CPU's too."""
    import simcore_ext.planner as planner
    monkeypatch.setattr(planner, "SAMPLE_ROWS", 4096)
    g = torch.Generator().manual_seed(3)
    N, d, k = 24_000, 16, 30
    U = ints(g, N, d, -4, 4)
    base = ints(g, 1, d, -4, 4)[0]
    if geometry == "identical":
        C = base.expand(k, d).clone()
    else:
        C = base + ints(g, k, d, -1, 1)
        rel = torch.randperm(N, generator=g)[: N // 100]
        U[rel] = base + ints(g, rel.numel(), d, -1, 1)
    if geometry == "duplicates":
        U[torch.randperm(N, generator=g)[: N // 3]] = U[rel[torch.randint(0, rel.numel(), (N // 3,), generator=g)]]
    U[(U == 0).all(1)] = 1.0
    kw = dict(centroids=C, budget=budget or 5000, tau=tau, metric="dot")
    gpu = select_coreset(None, U.cuda(), **kw)
    assert gpu.stats["passes"] <= 2, gpu.stats
    assert torch.equal(gpu.indices, select_coreset(None, U, **kw).indices)
    assert torch.equal(gpu.indices, reference_select(None, U, **kw).indices)
