"""The CPU kernel paths (generic, avx2, avx512, avx512bf16) at their edges: feature counts
that are not a multiple of any vector width, partial tiles, masks, the division by the
norm, ties, and the bit-for-bit stability of a score whatever centroids come with it."""
import pytest
import torch

from conftest import AVAILABLE_ISAS, DTYPES
from oracle_check import assert_valid_topk

ops = torch.ops.simcore


def int_features(g, rows, d, lo=-4, hi=4):
    return torch.randint(lo, hi + 1, (rows, d), generator=g).float()


def dense_scores(C, U, normalize=False):
    """Every score s(j, i) as the kernel computes it (K = n, scattered back by index)."""
    n = U.shape[0]
    v, i, _ = ops.scan_topk(C, U, None, n, normalize)
    out = torch.full((C.shape[0], n), float("nan"))
    out.scatter_(1, i, v)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 7, 8, 9, 15, 16, 17, 33, 65, 257])  # 257: avx2 loops panels outside
@pytest.mark.parametrize("n", [1, 15, 63, 65, 130])
def test_odd_shapes_exact(isa, dtype, d, n):
    """Integer features: every product and sum is exact, so the answer must be the oracle's;
    with normalize the score must be exactly (exact dot) / (returned norm) in float32."""
    g = torch.Generator().manual_seed(d * 1000 + n)
    C, U = int_features(g, 8, d), int_features(g, n, d)
    U[0] = 1  # no zero rows (normalize divides)
    ex = torch.rand(n, generator=g) < 0.25
    v, i = ops.masked_topk(C.to(dtype), U.to(dtype), ex, n)
    assert_valid_topk(v, i, C, U, ex, n, exact=True)
    U[U.abs().sum(1) == 0, 0] = 1
    vn, inn, norms = ops.scan_topk(C.to(dtype), U.to(dtype), None, n, True)
    torch.testing.assert_close(norms.double(), U.double().norm(dim=1), rtol=1e-7, atol=0)
    dots = C @ U.T  # exact
    ok = inn >= 0
    expect = torch.gather(dots, 1, inn.clamp(min=0)) / norms[inn.clamp(min=0)]
    assert torch.equal(vn[ok], expect[ok])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("d", [37, 300])
def test_centroid_subsets_reproduce_scores_bitwise(isa, dtype, normalize, d):
    """Rescans pass a gathered subset of the centroids: each (j, i) keeps its bits."""
    g = torch.Generator().manual_seed(11)
    C = torch.randn(13, d, generator=g).to(dtype)
    U = torch.randn(300, d, generator=g).to(dtype)
    full = dense_scores(C, U, normalize)
    for sub in [[5], [12, 0, 3], list(range(12, -1, -1)), [2, 2, 9], [6, 7, 8, 9, 10, 11, 12]]:
        assert torch.equal(dense_scores(C[sub], U, normalize), full[sub]), sub
    for a, b in [(0, 1), (63, 65), (64, 128), (1, 300)]:  # row windows: other tiles, offsets
        assert torch.equal(dense_scores(C, U[a:b], normalize), full[:, a:b]), (a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicate_rows_resolve_to_smallest_index(isa, dtype):
    g = torch.Generator().manual_seed(12)
    C, U = int_features(g, 9, 19, -2, 2), int_features(g, 260, 19, -2, 2)
    for src, dsts in [(3, [70, 130, 259]), (64, [65, 200]), (100, [101, 102, 127, 128])]:
        U[dsts] = U[src].clone()  # copies in other tiles, blocks and lanes
    ex = torch.zeros(260, dtype=torch.bool)
    ex[[70, 102]] = True
    for K in [1, 3, 40]:
        v, i = ops.masked_topk(C.to(dtype), U.to(dtype), ex, K)
        assert_valid_topk(v, i, C, U, ex, K, exact=True)


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(AVAILABLE_ISAS), reason="needs an AVX-512 CPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("d", [77, 300])
def test_avx2_and_avx512_agree_bitwise(monkeypatch, dtype, normalize, d):
    """Both sum one FMA per feature in feature order and widen half precisions exactly."""
    g = torch.Generator().manual_seed(13)
    C, U = torch.randn(20, d, generator=g).to(dtype), torch.randn(500, d, generator=g).to(dtype)
    got = []
    for isa in ["avx2", "avx512"]:
        monkeypatch.setenv("SIMCORE_CPU_ISA", isa)
        got.append(ops.scan_topk(C, U, None, 500, normalize))
    for a, b in zip(*got):
        assert torch.equal(a, b)
