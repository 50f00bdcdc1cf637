"""select_coreset against the float64 oracle (reference_select), on random and adversarial
inputs: exact ties, duplicate rows, truncated rounds, both stop rules, exhaustion, rescans."""
import numpy as np
import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import torch.nn.functional as F

import simcore_ext.planner as planner
import simcore_ext.select as select_mod
from simcore_ext import select_coreset
from simcore_ext.planner import Plan
from simcore_ext.reference import reference_select
from oracle_check import assert_valid


def make_data(kind, seed, n, N, d):
    g = torch.Generator().manual_seed(seed)
    if kind == "int":  # exact in float32: ties are real ties
        X = torch.randint(-3, 4, (n, d), generator=g).float()
        U = torch.randint(-3, 4, (N, d), generator=g).float()
    elif kind == "clustered":  # U crowded around few points: lists overlap, rescans happen
        X = torch.randn(n, d, generator=g)
        centres = torch.randn(3, d, generator=g)
        U = centres[torch.randint(0, 3, (N,), generator=g)] + 0.05 * torch.randn(N, d, generator=g)
    else:
        X, U = torch.randn(n, d, generator=g), torch.randn(N, d, generator=g)
    if kind in ("int", "dup") and N > 1:  # exact duplicate rows, later copies of earlier ones
        src = torch.randint(0, N, (N // 3,), generator=g)
        dst = torch.randint(0, N, (N // 3,), generator=g)
        U[dst] = U[src].clone()
    if kind == "int":
        U[(U == 0).all(1)] = 1.0  # cosine needs non-zero rows
        X[(X == 0).all(1)] = 1.0
    return X, U


def random_floors(seed):
    """A plan with floors at random depths, set to real rows' scores (exact ties with
    integer features), some lists unfloored, K random: a stand-in for a plan that errs."""
    def plan(C, U, budget, metric, tau, patience, bound):
        rng = np.random.default_rng(seed)
        S = C.double() @ (F.normalize(U.materialize(), dim=1) if metric == "cosine" else U.materialize()).T
        srt = S.float().sort(dim=1, descending=True).values
        pos = torch.from_numpy(rng.integers(0, U.n, C.shape[0]))
        floor = srt.gather(1, pos[:, None])[:, 0].contiguous()
        floor[torch.from_numpy(rng.random(C.shape[0]) < 0.3)] = -float("inf")
        return Plan(K=int(rng.integers(1, U.n + 1)), floor=floor,
                    items=None if tau is None else int(rng.integers(0, 2 * U.n)))
    return plan


budgets = st.one_of(st.none(), st.integers(1, 400), st.floats(0.01, 0.99))
stops = st.sampled_from([(0.95, 20), (0.9, 1), (0.99, 3), (1.0, 2), (None, 20)])


@given(kind=st.sampled_from(["gauss", "int", "dup", "clustered"]), seed=st.integers(0, 2**31 - 1),
       n=st.integers(1, 40), N=st.integers(1, 300), d=st.integers(1, 24), k=st.integers(1, 12),
       budget=budgets, stop=stops, metric=st.sampled_from(["cosine", "dot"]),
       chunk=st.sampled_from([None, 1, 7, 64, 100]),
       lists=st.sampled_from(["planned", "sampled", "tiny", "floored"]))
def test_matches_oracle(kind, seed, n, N, d, k, budget, stop, metric, chunk, lists):
    X, U = make_data(kind, seed, n, N, d)
    tau, patience = stop
    if isinstance(budget, float) and int(budget * N) < 1:
        budget = None
    kw = dict(k=k, budget=budget, tau=tau, patience=patience, metric=metric)
    with pytest.MonkeyPatch.context() as mp:
        if lists == "sampled":  # the plan from a sample of U, not all of it
            mp.setattr(planner, "SAMPLE_ROWS", 1 + seed % 40)
        if lists == "tiny":  # force the rescan path: lists of 1-2 candidates
            mp.setattr(select_mod, "plan_first_pass", lambda *a: Plan(K=1 + seed % 2))
        if lists == "floored":  # floors anywhere, on rows' exact scores too: refills from floors
            mp.setattr(select_mod, "plan_first_pass", random_floors(seed))
        fast = select_coreset(X, U, chunk_size=chunk, **kw)
    oracle = reference_select(X, U, **kw)
    note(f"fast {fast} stats {fast.stats}\noracle {oracle}")
    assert fast.params["budget"] == oracle.params["budget"]
    assert torch.equal(fast.centroids, oracle.centroids.float()) or metric == "cosine"
    assert_valid(fast, U, metric, fast.params["budget"], tau, patience)
    exact = kind == "int" and metric == "dot" and k >= n  # centroids = integer target rows
    if exact:
        assert torch.equal(fast.indices, oracle.indices)
        assert torch.equal(fast.round_scores, oracle.round_scores)
        assert torch.equal(fast.round_sizes, oracle.round_sizes)
        assert fast.stop_reason == oracle.stop_reason and fast.threshold == oracle.threshold


def test_random_inputs_equal_oracle_exactly():
    """Away from near-ties (Gaussian data) the indices are simply the oracle's."""
    for seed in range(30):
        X, U = make_data("gauss", seed, 20, 500, 16)
        for metric in ("cosine", "dot"):
            kw = dict(k=8, budget=[None, 60, 0.2][seed % 3], metric=metric, patience=3)
            fast, oracle = select_coreset(X, U, **kw), reference_select(X, U, **kw)
            assert torch.equal(fast.indices, oracle.indices), (seed, metric)
            assert fast.stop_reason == oracle.stop_reason
            np.testing.assert_allclose(fast.round_scores, oracle.round_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("short_refills", [False, True])
def test_rescans_are_exact(monkeypatch, short_refills):
    X, U = make_data("clustered", 0, 30, 2000, 8)
    monkeypatch.setattr(select_mod, "plan_first_pass", lambda *a: Plan(K=2))
    if short_refills:  # every refill sized for one more item: many rescans
        monkeypatch.setattr(select_mod, "_horizon", lambda *a: 1)
    fast = select_coreset(X, U, k=10, budget=600, tau=None)
    oracle = reference_select(X, U, k=10, budget=600, tau=None)
    assert torch.equal(fast.indices, oracle.indices)
    if short_refills:
        assert fast.stats["passes"] > 3, fast.stats
    else:  # one refill, sized for the rest of the budget, suffices
        assert fast.stats["passes"] == 2, fast.stats


def test_exact_ties_and_duplicates_resolve_to_smallest_index():
    C = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    U = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    r = select_coreset(None, U, centroids=C, budget=6, tau=None, metric="dot")
    # Round 1: c0 -> 1 (first of 1, 2, 4, 5 at score 1), c1 -> 0; round 2: 2, 3;
    # round 3: both -> 4 (ties 5 for c0, beats 5 for c1), counted once; round 4: 5.
    assert r.indices.tolist() == [1, 0, 2, 3, 4, 5]
    assert r.round_sizes.tolist() == [2, 2, 1, 1]
    o = reference_select(None, U, centroids=C, budget=6, tau=None, metric="dot")
    assert torch.equal(r.indices, o.indices)


def test_budget_truncation_keeps_best_in_selection_order():
    # Three centroids pick three different items in round 1; budget 2 keeps the best two.
    C = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    U = torch.tensor([[0.5, 0, 0], [0, 0.9, 0], [0, 0, 0.7], [0.1, 0, 0]])
    r = select_coreset(None, U, centroids=C, budget=2, tau=None, metric="dot")
    assert r.indices.tolist() == [1, 2] and r.stop_reason == "budget"
    assert r.round_sizes.tolist() == [2]
    # Tie in value: the item whose first picking centroid is lower wins.
    U2 = torch.tensor([[0.7, 0, 0], [0, 0.7, 0], [0, 0, 0.7]])
    r2 = select_coreset(None, U2, centroids=C, budget=2, tau=None, metric="dot")
    assert r2.indices.tolist() == [0, 1]


@pytest.mark.parametrize("patience", [1, 20])
def test_criterion_stop(patience):
    X, U = make_data("gauss", 5, 10, 3000, 8)
    r = select_coreset(X, U, k=5, budget=2000, tau=0.99, patience=patience, metric="cosine")
    o = reference_select(X, U, k=5, budget=2000, tau=0.99, patience=patience, metric="cosine")
    assert r.stop_reason == o.stop_reason == "criterion"
    assert torch.equal(r.indices, o.indices)
    assert r.round_sizes[-1] == 0 and len(r.round_scores) == len(r.round_sizes) > patience
    assert r.round_scores[-1] < r.threshold
    assert r.threshold == pytest.approx(0.99 * r.round_scores[patience - 1].item())


def test_exhausted_and_budget_equal_to_n():
    X, U = make_data("gauss", 6, 5, 37, 4)
    r = select_coreset(X, U, k=3, budget=1000, tau=None)
    assert r.stop_reason == "exhausted" and sorted(r.indices.tolist()) == list(range(37))
    r = select_coreset(X, U, k=3, budget=37, tau=None)
    assert r.stop_reason == "budget" and len(r) == 37


def test_k_at_least_n_uses_every_target_row():
    X, U = make_data("gauss", 7, 6, 100, 5)
    r = select_coreset(X, U, k=50, budget=20, metric="cosine")
    assert r.params["k"] == 6
    torch.testing.assert_close(r.centroids, torch.nn.functional.normalize(X, dim=1))


def test_default_budget_is_50n():
    X, U = make_data("gauss", 8, 2, 500, 4)
    r = select_coreset(X, U, k=2, tau=None)
    assert r.params["budget"] == 100 and len(r) == 100


def test_fraction_budget_floors():
    X, U = make_data("gauss", 9, 4, 999, 4)
    assert select_coreset(X, U, k=2, budget=0.01, tau=None).params["budget"] == 9


def test_single_item_openset():
    r = select_coreset(torch.randn(3, 4), torch.randn(1, 4), k=2, budget=5)
    assert r.indices.tolist() == [0] and r.stop_reason == "exhausted"


def test_inputs_requiring_grad_are_fine():
    X, U = make_data("gauss", 10, 5, 50, 4)
    r = select_coreset(X.requires_grad_(), U.requires_grad_(), k=2, budget=5)
    assert len(r) == 5


def test_numpy_inputs():
    X, U = make_data("gauss", 11, 8, 300, 6)
    a = select_coreset(X.numpy(), U.numpy(), k=4, budget=30)
    b = select_coreset(X, U, k=4, budget=30)
    assert torch.equal(a.indices, b.indices)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(isa, dtype):
    """Products in the input dtype (centroids rounded to it), sums in float32."""
    for seed in range(4):
        X, U = make_data("gauss", seed, 15, 400, 24)
        Uh = U.to(dtype)
        for metric in ("cosine", "dot"):
            r = select_coreset(X, Uh, k=6, budget=120, metric=metric, patience=3)
            assert r.params["dtype"] == str(dtype).replace("torch.", "")
            assert_valid(r, Uh, metric, 120, 0.95, 3, dtype=dtype)
        # Exact data: small integers are exact in both half types.
        Xi, Ui = make_data("int", seed, 6, 300, 10)
        kw = dict(k=6, budget=100, metric="dot", tau=None)
        a = select_coreset(Xi.to(dtype), Ui.to(dtype), **kw)
        assert torch.equal(a.indices, reference_select(Xi, Ui, **kw).indices)


def test_every_isa_selects_validly(isa):
    X, U = make_data("dup", 3, 25, 800, 40)
    r = select_coreset(X, U, k=9, budget=200, patience=4)
    assert_valid(r, U, "cosine", 200, 0.95, 4)


def test_on_device(device):
    X, U = make_data("int", 12, 8, 500, 16)
    kw = dict(k=8, budget=150, metric="dot", tau=None)
    r = select_coreset(X.to(device), U.to(device), **kw)
    assert r.params["device"].startswith(device)
    assert torch.equal(r.indices, reference_select(X, U, **kw).indices)


def test_default_chunk_sizes():
    from simcore_ext.select import _resident, default_chunk_rows
    from simcore_ext.sources import OpenSet
    f16 = torch.float16
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    U = OpenSet(torch.zeros(10, 256, dtype=f16))
    assert _resident(U, cpu) and not _resident(U, gpu)  # host tensors are copied to a GPU
    assert default_chunk_rows(256, f16, cpu, _resident(U, cpu)) == (2 << 30) // 512
    assert default_chunk_rows(256, f16, gpu, _resident(U, gpu)) == (512 << 20) // 512
    assert default_chunk_rows(256, f16, cpu, False) == (64 << 20) // 512  # files and arrays
    assert default_chunk_rows(256, f16, gpu, True) == (4 << 30) // 512  # already on the GPU
