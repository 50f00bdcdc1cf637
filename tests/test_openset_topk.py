"""openset_topk: the streamed fused pass on its own, against the float64 reference."""
import numpy as np
import pytest
import torch

from simcore_ext import openset_topk
from oracle_check import assert_valid_topk


@pytest.mark.parametrize("chunk", [None, 1, 97])
def test_matches_reference(device, chunk, tmp_path):
    g = torch.Generator().manual_seed(0)
    C = torch.randint(-3, 4, (9, 20), generator=g).float()
    U = torch.randint(-3, 4, (700, 20), generator=g).float()
    U[350:] = U[:350].clone()
    ex = torch.rand(700, generator=g) < 0.2
    np.save(tmp_path / "u.npy", U.numpy())
    for src in (U, U.numpy(), tmp_path / "u.npy", [U[:300], U[300:]]):
        v, i = openset_topk(C, src, 40, excluded=ex, device=device, chunk_size=chunk)
        assert v.device.type == "cpu" and v.shape == (9, 40)
        assert_valid_topk(v, i, C, U, ex, 40, exact=True)


def test_cosine():
    g = torch.Generator().manual_seed(1)
    C = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=1)
    U = torch.randn(300, 16, generator=g) * 3
    v, i = openset_topk(C, U, 10, metric="cosine", chunk_size=50)
    assert_valid_topk(v, i, C, U / U.norm(dim=1, keepdim=True), None, 10)


def test_k_zero_and_k_beyond_the_rows():
    C, U = torch.randn(2, 4), torch.randn(10, 4)
    v, i = openset_topk(C, U, 0)
    assert v.shape == (2, 0) and i.shape == (2, 0)
    v, i = openset_topk(C, U, 10**7)  # no memory in proportion to K beyond the rows
    assert v.shape == (2, 10**7) and (i[:, :10] >= 0).all() and (i[:, 10:] == -1).all()
    assert torch.isinf(v[:, 10:]).all()


def test_centroids_that_overflow_the_openset_dtype():
    with pytest.raises(ValueError, match="do not fit in float16"):
        openset_topk(torch.full((2, 4), 1e6), torch.randn(10, 4).half(), 3)


def test_errors():
    C, U = torch.randn(2, 4), torch.randn(10, 4)
    with pytest.raises(ValueError, match="excluded must have shape"):
        openset_topk(C, U, 3, excluded=torch.zeros(9, dtype=torch.bool))
    with pytest.raises(TypeError, match="excluded must be a bool mask"):
        openset_topk(C, U, 3, excluded=torch.zeros(10))
    with pytest.raises(TypeError, match="excluded must be a bool mask"):
        openset_topk(C, U, 3, excluded=object())
    with pytest.raises(ValueError, match="features per row"):
        openset_topk(torch.randn(2, 5), U, 3)
    with pytest.raises(ValueError, match="K must be >= 0"):
        openset_topk(C, U, -1)
    U[4, 1] = float("nan")
    with pytest.raises(ValueError, match="row 4"):
        openset_topk(C, U, 3)
