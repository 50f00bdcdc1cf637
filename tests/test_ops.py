"""The torch ops against a float64 reference, on every device x dtype x CPU instruction set."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import simcore_ext
from oracle_check import assert_valid_topk, reference_topk
from conftest import DTYPES

ops = torch.ops.simcore


def int_features(g, rows, d, lo=-4, hi=4):
    """Small integers: every product and sum is exact in float32 (and in bf16/f16 inputs)."""
    return torch.randint(lo, hi + 1, (rows, d), generator=g).float()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 130, 1, 200), (13, 300, 33, 9),
                                   (100, 700, 128, 64), (6, 64, 16, 64), (5, 65, 31, 70)])
def test_masked_topk_exact_on_integer_data(isa, device, dtype, shape):
    k, n, d, K = shape
    g = torch.Generator().manual_seed(k * 1000 + n + d)
    C, U = int_features(g, k, d), int_features(g, n, d)
    ex = torch.rand(n, generator=g) < 0.25
    v, i = ops.masked_topk(C.to(device, dtype), U.to(device, dtype), ex.to(device), K)
    assert v.dtype == torch.float32 and i.dtype == torch.int64 and v.shape == (k, K)
    assert_valid_topk(v, i, C, U, ex, K, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_topk_random_within_rounding(isa, device, dtype):
    g = torch.Generator().manual_seed(1)
    C, U = torch.randn(37, 203, generator=g), torch.randn(1000, 203, generator=g)
    C, U = C.to(dtype), U.to(dtype)  # the reference sees the rounded inputs
    ex = torch.rand(1000, generator=g) < 0.5
    v, i = ops.masked_topk(C.to(device), U.to(device), ex.to(device), 50)
    assert_valid_topk(v, i, C, U, ex, 50)


@given(k=st.integers(1, 20), n=st.integers(1, 200), d=st.integers(1, 40), K=st.integers(0, 250),
       frac=st.floats(0, 1), seed=st.integers(0, 2**31 - 1), dup=st.booleans())
def test_masked_topk_hypothesis(k, n, d, K, frac, seed, dup):
    g = torch.Generator().manual_seed(seed)
    C, U = int_features(g, k, d, -3, 3), int_features(g, n, d, -3, 3)
    if dup:  # duplicate rows: ties must go to the smaller index
        U[n // 2 :] = U[: n - n // 2].clone()
    ex = torch.rand(n, generator=g) < frac
    v, i = ops.masked_topk(C, U, ex, K)
    assert_valid_topk(v, i, C, U, ex, K, exact=True)


def test_missing_slots_and_all_excluded():
    C, U = torch.randn(3, 8), torch.randn(5, 8)
    v, i = ops.masked_topk(C, U, torch.ones(5, dtype=torch.bool), 4)
    assert torch.all(v == float("-inf")) and torch.all(i == -1)
    v, i = ops.masked_topk(C, U, None, 7)
    assert (i[:, :5] >= 0).all() and (i[:, 5:] == -1).all() and torch.all(v[:, 5:] == float("-inf"))
    v, i = ops.masked_topk(C, U, None, 0)
    assert v.shape == (3, 0) and i.shape == (3, 0)
    v, i = ops.masked_topk(C, U[:0], None, 2)
    assert torch.all(i == -1)


def test_scores_are_position_independent(isa):
    """The score of (j, i) is bit-identical whatever the chunk, gather or thread: the
    property that keeps rescans and chunked streaming exact."""
    g = torch.Generator().manual_seed(3)
    C, U = torch.randn(11, 100, generator=g), torch.randn(777, 100, generator=g)
    v, i = ops.masked_topk(C, U, None, 777)
    full = torch.empty(11, 777)
    full.scatter_(1, i, v)
    for a, b in [(0, 64), (1, 2), (100, 777), (640, 700)]:
        vc, ic = ops.masked_topk(C, U[a:b], None, b - a)
        part = torch.empty(11, b - a)
        part.scatter_(1, ic, vc)
        assert torch.equal(part, full[:, a:b])
    perm = torch.randperm(777, generator=g)
    vp, ip = ops.masked_topk(C, U[perm], None, 777)
    got = torch.empty(11, 777)
    got.scatter_(1, perm[ip], vp)
    assert torch.equal(got, full)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        v1, i1 = ops.masked_topk(C, U, None, 777)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(v1, v) and torch.equal(i1, i)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scan_topk_normalize_and_norms(isa, device, dtype):
    g = torch.Generator().manual_seed(4)
    C = torch.nn.functional.normalize(torch.randn(9, 70, generator=g), dim=1).to(dtype)
    U = (torch.randn(300, 70, generator=g) * torch.rand(300, 1, generator=g) * 5).to(dtype)
    v, i, norms = ops.scan_topk(C.to(device), U.to(device), None, 20, True)
    ref_norms = U.double().norm(dim=1)
    torch.testing.assert_close(norms.cpu().double(), ref_norms, rtol=1e-6, atol=0)
    Un = U.double() / ref_norms[:, None]
    assert_valid_topk(v, i, C.double(), Un, None, 20)
    v2, i2, n2 = ops.scan_topk(C.to(device), U.to(device), None, 20, False)
    assert torch.equal(n2, norms)


def test_norms_identical_on_every_isa(monkeypatch):
    from conftest import AVAILABLE_ISAS
    g = torch.Generator().manual_seed(5)
    U = torch.randn(200, 77, generator=g)
    C = torch.randn(2, 77, generator=g)
    results = []
    for isa in AVAILABLE_ISAS:
        monkeypatch.setenv("SIMCORE_CPU_ISA", isa)
        for dtype in DTYPES:
            results.append((isa, dtype, ops.scan_topk(C.to(dtype), U.to(dtype), None, 1, True)[2]))
    for dtype in DTYPES:
        same = [r for (_, dt, r) in results if dt == dtype]
        assert all(torch.equal(same[0], r) for r in same[1:])


def test_non_contiguous_rows():
    g = torch.Generator().manual_seed(6)
    big = torch.randn(300, 50, generator=g)
    C = torch.randn(4, 40, generator=g)
    v1, i1 = ops.masked_topk(C, big[:, :40], None, 10)  # row stride 50
    v2, i2 = ops.masked_topk(C, big[:, :40].contiguous(), None, 10)
    assert torch.equal(v1, v2) and torch.equal(i1, i2)
    v3, i3 = ops.masked_topk(C, big[::2, :40], None, 10)  # row stride 100
    v4, i4 = ops.masked_topk(C, big[::2, :40].contiguous(), None, 10)
    assert torch.equal(v3, v4) and torch.equal(i3, i4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_facility_location(isa, device, dtype):
    g = torch.Generator().manual_seed(7)
    C, U = int_features(g, 10, 20).to(dtype), int_features(g, 90, 20).to(dtype)
    sel = torch.rand(90, generator=g) < 0.3
    f = ops.facility_location(C.to(device), U.to(device), sel.to(device))
    ref = (C.double() @ U.double().T)[:, sel].max(1).values
    assert torch.equal(f.cpu().double(), ref)
    none = ops.facility_location(C.to(device), U.to(device), torch.zeros(90, dtype=torch.bool, device=device))
    assert torch.all(none == float("-inf"))


def test_facility_location_matches_masked_topk_bitwise():
    g = torch.Generator().manual_seed(8)
    C, U = torch.randn(12, 65, generator=g), torch.randn(500, 65, generator=g)
    sel = torch.rand(500, generator=g) < 0.1
    f = ops.facility_location(C, U, sel)
    v, _ = ops.masked_topk(C, U, ~sel, 1)
    assert torch.equal(f, v[:, 0])


def test_op_errors():
    C, U = torch.randn(3, 8), torch.randn(5, 8)
    with pytest.raises(TypeError, match="same dtype"):
        ops.masked_topk(C, U.double(), None, 2)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        ops.masked_topk(C.long(), U.long(), None, 2)
    with pytest.raises(ValueError, match="feature dimension"):
        ops.masked_topk(C, torch.randn(5, 9), None, 2)
    with pytest.raises(ValueError, match="2-D"):
        ops.masked_topk(C, U[0], None, 2)
    with pytest.raises(ValueError, match="excluded must have shape"):
        ops.masked_topk(C, U, torch.zeros(4, dtype=torch.bool), 2)
    with pytest.raises(TypeError, match="bool"):
        ops.masked_topk(C, U, torch.zeros(5), 2)
    with pytest.raises(ValueError, match="K must be >= 0"):
        ops.masked_topk(C, U, None, -1)
    with pytest.raises(ValueError, match="selected must have shape"):
        ops.facility_location(C, U, torch.zeros(4, dtype=torch.bool))


def test_isa_override(monkeypatch):
    monkeypatch.setenv("SIMCORE_CPU_ISA", "generic")
    assert simcore_ext.cpu_isa() == "generic"
    monkeypatch.setenv("SIMCORE_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="unknown instruction set"):
        ops.masked_topk(torch.randn(2, 3), torch.randn(4, 3), None, 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    g = torch.Generator().manual_seed(9)
    C, U = torch.randn(5, 24, generator=g).to(dtype), torch.randn(40, 24, generator=g).to(dtype)
    ex = torch.rand(40, generator=g) < 0.3
    torch.library.opcheck(ops.masked_topk.default, (C, U, ex, 7))
    torch.library.opcheck(ops.masked_topk.default, (C, U, None, 7))
    torch.library.opcheck(ops.scan_topk.default, (C, U, ex, 7, True))
    torch.library.opcheck(ops.facility_location.default, (C, U, ex))


def test_torch_compile_uses_fake_impls():
    def f(C, U, ex):
        v, i = simcore_ext.masked_topk(C, U, ex, 4)
        return v.sum() + i.sum(), simcore_ext.facility_location(C, U, ex)

    C, U = torch.randn(3, 16), torch.randn(50, 16)
    ex = torch.rand(50) < 0.5
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    a, b = compiled(C, U, ex), f(C, U, ex)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("K,floor", [(6000, False), (20000, False), (9000, True)])
def test_deep_lists_are_sorted_exactly(K, floor):
    """Lists of thousands of entries per centroid (crowded centroids) take the radix sort
    of the merge: (score desc, index asc) over integer scores with many ties, with and
    without a floor, and zero rows (a tie at 0 across many rows)."""
    g = torch.Generator().manual_seed(K)
    C = torch.randint(-2, 3, (5, 8), generator=g).float()
    U = torch.randint(-2, 3, (30_000, 8), generator=g).float()
    U[::7] = 0.0
    fl = torch.full((5,), -3.0) if floor else None
    v, i, _ = ops.scan_topk(C, U, None, K, False, fl)
    S = (C.double() @ U.double().T)
    for j in range(5):
        ok = torch.ones(U.shape[0], dtype=torch.bool) if fl is None else S[j] > fl[j]
        rows = torch.nonzero(ok).view(-1)
        order = rows[np.lexsort((rows.numpy(), -S[j, rows].numpy()))][:K]
        m = order.numel()
        assert torch.equal(i[j, :m], order), j
        assert torch.equal(v[j, :m].double(), S[j, order])
        assert (i[j, m:] == -1).all() and torch.isinf(v[j, m:]).all()
