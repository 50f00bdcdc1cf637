"""The first-pass plan (planner.py): lists deep enough for the geometry, read off a sample.

Crowded centroids (a fine-grained target: its centroids share their nearest open-set
rows), identical centroids and many duplicate rows used to cost one rescan after another
(48 passes at B = 1% in issue 10's reproduction). With the plan they take one pass, or two,
and the result is the oracle's. Pass counts are deterministic (seeded data, seeded
sample), so they are asserted; times are measured in benchmarks/."""
import numpy as np
import pytest
import torch

import simcore_ext.planner as planner
import simcore_ext.select as select_mod
from oracle_check import assert_valid
from simcore_ext import select_coreset
from simcore_ext.planner import Plan
from simcore_ext.reference import reference_select
from simcore_ext.sources import OpenSet


@pytest.fixture(autouse=True)
def small_sample(monkeypatch):  # a sample ~1/6 of U, as 16k rows are of 100k
    monkeypatch.setattr(planner, "SAMPLE_ROWS", 4096)


def world(geometry, N=24_000, d=16, n=200, seed=1):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(N, d, generator=g)
    base = torch.randn(d, generator=g)
    if geometry == "spread":
        X = torch.randn(n, d, generator=g)
    elif geometry == "crowded":  # issue 10's recipe, scaled down: X and 1% of U near `base`
        X = base + 0.3 * torch.randn(n, d, generator=g)
        U[: N // 100] = base + 0.4 * torch.randn(N // 100, d, generator=g)
    elif geometry == "identical":  # every centroid the same point
        X = base.expand(n, d).clone()
    elif geometry == "duplicates":  # a third of U repeats 100 rows near the target
        X = base + 0.3 * torch.randn(n, d, generator=g)
        src = base + 0.4 * torch.randn(100, d, generator=g)
        U[torch.randperm(N, generator=g)[: N // 3]] = src[torch.randint(0, 100, (N // 3,), generator=g)]
    return X, U


@pytest.mark.parametrize("geometry", ["spread", "crowded", "identical", "duplicates"])
@pytest.mark.parametrize("budget,tau", [(0.01, None), (0.05, None), (None, 0.95)])
def test_any_geometry_takes_at_most_two_passes_and_is_exact(geometry, budget, tau):
    X, U = world(geometry)
    kw = dict(k=30, budget=budget, tau=tau)
    r = select_coreset(X, U, **kw)
    assert r.stats["sample_rows"] == planner.SAMPLE_ROWS
    assert r.stats["passes"] <= 2, r.stats
    # Bit for bit the selection from lists that hold all of U (the same kernel scores)...
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(select_mod, "plan_first_pass", lambda *a: Plan(K=U.shape[0]))
        whole = select_coreset(X, U, **kw)
    assert whole.stats["passes"] == 1
    assert torch.equal(r.indices, whole.indices) and torch.equal(r.round_scores, whole.round_scores)
    # ...and the float64 oracle's, up to float32 rounding (identical centroids tie often)
    assert_valid(r, U, "cosine", r.params["budget"], tau, 20)
    if geometry != "identical":
        assert torch.equal(r.indices, reference_select(X, U, **kw).indices)


def test_crowded_centroids_take_one_pass():
    """The issue's case: every list must hold about the whole budget."""
    X, U = world("crowded")
    for budget, tau in [(0.01, None), (0.05, None), (None, 0.95)]:
        r = select_coreset(X, U, k=30, budget=budget, tau=tau)
        assert r.stats["passes"] == 1, (budget, r.stats)
        assert r.stats["initial_candidates"] >= 0.5 * len(r)  # deep lists, as needed


def test_plan_on_all_of_a_small_openset_is_exact_depth():
    """N <= the sample: the replay is the real run, so the lists never run dry."""
    X, U = world("crowded", N=4000)
    r = select_coreset(X, U, k=20, budget=400, tau=None)
    assert r.stats["sample_rows"] == 4000 and r.stats["passes"] == 1
    assert torch.equal(r.indices, reference_select(X, U, k=20, budget=400, tau=None).indices)


def test_sample_is_stratified_deterministic_and_the_same_from_any_source(tmp_path):
    N, d = 50_000, 4
    U = torch.arange(N, dtype=torch.float32)[:, None].repeat(1, d)  # row i holds i
    a = planner.sample_rows(OpenSet(U), 2048)
    b = planner.sample_rows(OpenSet(U), 2048)
    assert torch.equal(a, b) and a.shape == (2048, d)
    rows = a[:, 0].long().numpy()
    assert np.unique(rows).size == rows.size  # no row twice
    # stratified: every 1/1024th of U gives one run of 2 rows
    stratum = np.searchsorted((np.arange(1025) * N) // 1024, rows, side="right") - 1
    assert np.array_equal(np.bincount(stratum, minlength=1024), np.full(1024, 2))
    # shards, numpy arrays and .npy files give the same rows
    np.save(tmp_path / "u.npy", U[20_000:].numpy())
    shards = [U[:12_345], U[12_345:20_000].numpy(), str(tmp_path / "u.npy")]
    assert torch.equal(planner.sample_rows(OpenSet(shards), 2048), a)
    # all of a small U
    assert torch.equal(planner.sample_rows(OpenSet(U[:100]), 2048), U[:100])


def test_plan_tolerates_bad_rows_and_the_pass_still_names_them():
    X, U = world("spread", N=30_000)
    U[12_345, 3] = float("nan")
    with pytest.raises(ValueError, match="row 12345"):
        select_coreset(X, U, k=10, budget=0.01)


def test_plan_stays_within_the_memory_bound():
    X, U = world("crowded")
    p = planner.plan_first_pass(torch.nn.functional.normalize(X[:50], dim=1), OpenSet(U),
                                budget=3000, metric="cosine", tau=None, patience=20, bound=100)
    assert p.K == 100 and p.floor.shape == (50,)


def integer_world(geometry, N=24_000, d=16, k=30, seed=3):
    """Integer features, metric dot: every score exact, so the oracle's indices are the
    only right answer (ties resolve to the smaller row: there are many)."""
    g = torch.Generator().manual_seed(seed)
    ints = lambda rows, lo, hi: torch.randint(lo, hi + 1, (rows, d), generator=g).float()  # noqa: E731
    U = ints(N, -4, 4)
    base = ints(1, -4, 4)[0]
    if geometry == "identical":
        C = base.expand(k, d).clone()
    else:
        C = base + ints(k, -1, 1)
        rel = torch.randperm(N, generator=g)[: N // 100]
        U[rel] = base + ints(rel.numel(), -1, 1)
    if geometry == "duplicates":
        U[torch.randperm(N, generator=g)[: N // 3]] = U[rel[torch.randint(0, rel.numel(), (N // 3,), generator=g)]]
    U[(U == 0).all(1)] = 1.0
    return C, U


@pytest.mark.parametrize("geometry", ["crowded", "identical", "duplicates"])
@pytest.mark.parametrize("budget,tau", [(0.01, None), (0.05, None), (None, 0.95)])
def test_integer_worlds_are_the_oracle_at_every_chunk_size(geometry, budget, tau):
    C, U = integer_world(geometry)
    kw = dict(centroids=C, budget=budget or 5000, tau=tau, metric="dot")
    want = reference_select(None, U, **kw).indices
    for chunk in (None, 777, 5000):
        r = select_coreset(None, U, chunk_size=chunk, **kw)
        assert r.stats["passes"] <= 2, (chunk, r.stats)
        assert torch.equal(r.indices, want), chunk
