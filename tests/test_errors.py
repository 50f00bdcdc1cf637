"""Every bad input of SPEC.md: a ValueError/TypeError naming the argument and the value or row."""
import math

import numpy as np
import pytest
import torch

from simcore_ext import select_coreset

X = torch.randn(10, 6)
U = torch.randn(100, 6)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(k=0), ValueError, "k must be >= 1, got 0"),
    (dict(k=2.5), TypeError, "k must be an int"),
    (dict(k=True), TypeError, "k must be an int"),
    (dict(budget=0), ValueError, "budget must be >= 1 item, got 0"),
    (dict(budget=-3), ValueError, "budget must be >= 1 item, got -3"),
    (dict(budget=1.0), ValueError, r"fraction must be in \(0, 1\), got 1.0"),
    (dict(budget=0.0), ValueError, r"fraction must be in \(0, 1\), got 0.0"),
    (dict(budget=1.5), ValueError, r"got 1.5"),
    (dict(budget=0.001), ValueError, "less than one item"),
    (dict(budget="10"), TypeError, "budget must be"),
    (dict(budget=True), TypeError, "budget must be"),
    (dict(tau=0.0), ValueError, r"tau must be in \(0, 1\], got 0.0"),
    (dict(tau=1.5), ValueError, r"tau must be in \(0, 1\], got 1.5"),
    (dict(tau=-0.1), ValueError, "got -0.1"),
    (dict(tau="high"), TypeError, "tau must be"),
    (dict(patience=0), ValueError, "patience must be >= 1, got 0"),
    (dict(patience=1.5), TypeError, "patience must be an int"),
    (dict(metric="l2"), ValueError, "metric must be 'cosine' or 'dot', got 'l2'"),
    (dict(chunk_size=0), ValueError, "chunk_size must be >= 1, got 0"),
    (dict(device="tpu"), ValueError, "device"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(progress="yes"), TypeError, "progress must be a bool"),
])
def test_bad_parameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        select_coreset(X, U, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable():
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_coreset(X, U, device="cuda")


def test_shapes_and_emptiness():
    with pytest.raises(ValueError, match="target has 5 features per row, openset has 6"):
        select_coreset(torch.randn(4, 5), U)
    with pytest.raises(ValueError, match="centroids have 3 features per row, openset has 6"):
        select_coreset(None, U, centroids=torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"target is empty \(0 rows\)"):
        select_coreset(torch.randn(0, 6), U)
    with pytest.raises(ValueError, match=r"openset is empty \(0 rows\)"):
        select_coreset(X, torch.randn(0, 6))
    with pytest.raises(ValueError, match="openset is an empty list"):
        select_coreset(X, [])
    with pytest.raises(ValueError, match=r"centroids is empty"):
        select_coreset(None, U, centroids=torch.randn(0, 6))
    with pytest.raises(ValueError, match=r"target must be 2-D"):
        select_coreset(torch.randn(6), U)
    with pytest.raises(ValueError, match=r"openset must be 2-D"):
        select_coreset(X, torch.randn(3, 4, 6))
    with pytest.raises(ValueError, match="target is None"):
        select_coreset(None, U)
    with pytest.raises(TypeError, match="openset must be a tensor"):
        select_coreset(X, {"a": 1})


@pytest.mark.parametrize("name", ["target", "openset", "centroids"])
def test_integer_dtypes(name):
    args = dict(target=X, openset=U, centroids=None)
    args[name] = args.get(name) if args.get(name) is not None else X
    args[name] = args[name].long()
    with pytest.raises(TypeError, match=f"{name} must hold floating-point features, got dtype torch.int64"):
        select_coreset(args["target"], args["openset"], centroids=args["centroids"])
    with pytest.raises(TypeError, match=f"{name}.*floating-point"):
        a = dict(args)
        a[name] = a[name].numpy().astype(np.int32)
        select_coreset(a["target"], a["openset"], centroids=a["centroids"])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["target", "openset", "centroids"])
def test_non_finite_rows_are_named(name, bad):
    t, u, c = X.clone(), U.clone(), torch.randn(3, 6)
    row = {"target": 7, "openset": 63, "centroids": 2}[name]
    {"target": t, "openset": u, "centroids": c}[name][row, 4] = bad
    with pytest.raises(ValueError, match=f"{name} row {row} contains NaN or Inf"):
        select_coreset(t, u, centroids=c if name == "centroids" else None, budget=5)


def test_bad_row_in_a_later_shard_and_chunk_is_named_globally(tmp_path):
    u = U.clone()
    u[88, 0] = math.nan
    np.save(tmp_path / "b.npy", u[50:].numpy())
    with pytest.raises(ValueError, match=r"openset row 88 contains NaN or Inf"):
        select_coreset(X, [U[:50], str(tmp_path / "b.npy")], chunk_size=16, budget=5)


def test_zero_rows_under_cosine():
    u = U.clone()
    u[17] = 0
    with pytest.raises(ValueError, match="openset row 17 has zero norm"):
        select_coreset(X, u, budget=5)
    assert len(select_coreset(X, u, budget=5, metric="dot")) == 5  # fine under dot
    t = X.clone()
    t[3] = 0
    with pytest.raises(ValueError, match="target row 3 has zero norm"):
        select_coreset(t, U, budget=5)


def test_float64_values_beyond_float32():
    u = U.double().clone()
    u[5, 1] = 1e300
    with pytest.raises(ValueError, match="openset row 5 is too large for float32"):
        select_coreset(X, u, budget=5)


def test_nothing_is_written_on_error(tmp_path):
    before = set(tmp_path.iterdir())
    with pytest.raises(ValueError):
        select_coreset(X, U, budget=0)
    assert set(tmp_path.iterdir()) == before
