"""Test helpers: a float64 top-K reference and a replay check of a selection.

Float32 accumulation may legitimately pick a different item than the float64 oracle when
two similarities are closer than the rounding of a d-term dot product. `assert_valid`
replays a result round by round and checks every decision against the float64 scores
within that bound; exact duplicate rows must always resolve to the smallest index."""
import numpy as np
import torch

EPS32 = 2.0 ** -24


def scores64(C: torch.Tensor, U: torch.Tensor, metric: str) -> torch.Tensor:
    """s(j, i) in float64 with C used as given (already rounded to the compute dtype)."""
    C, U = C.double().cpu(), U.double().cpu()
    if metric == "cosine":
        U = U / U.norm(dim=1, keepdim=True)
    return C @ U.T


def tolerance(C: torch.Tensor, U: torch.Tensor, metric: str) -> float:
    """Rounding bound of a float32 d-term dot product (plus the division by the norm)."""
    C, U = C.double().cpu(), U.double().cpu()
    if metric == "cosine":
        U = U / U.norm(dim=1, keepdim=True)
    bound = (C.abs() @ U.abs().T).max().item()
    return 2 * (C.shape[1] + 4) * EPS32 * max(bound, 1e-30)


def reference_topk(C, U, excluded, K):
    """Best K per centroid by (score desc, index asc) in float64: (values, indices) padded."""
    S = scores64(C, U, "dot").numpy()
    k, n = S.shape
    vals = np.full((k, K), -np.inf)
    idx = np.full((k, K), -1, dtype=np.int64)
    allowed = np.ones(n, bool) if excluded is None else ~excluded.cpu().numpy()
    cols = np.flatnonzero(allowed)
    for j in range(k):
        order = cols[np.lexsort((cols, -S[j, cols]))][:K]
        vals[j, : len(order)] = S[j, order]
        idx[j, : len(order)] = order
    return vals, idx


def assert_valid_topk(values, indices, C, U, excluded, K, exact=False):
    """The op's answer is a correct top-K: exact (integer data) or within rounding."""
    rv, ri = reference_topk(C, U, excluded, K)
    values, indices = values.cpu().numpy(), indices.cpu().numpy()
    if exact:
        np.testing.assert_array_equal(indices, ri)
        np.testing.assert_array_equal(values, rv.astype(np.float32))
        return
    tol = tolerance(C, U, "dot")
    S = scores64(C, U, "dot").numpy()
    assert (indices >= 0).sum() == (ri >= 0).sum(), "wrong number of candidates"
    for j in range(C.shape[0]):
        got = indices[j][indices[j] >= 0]
        assert len(set(got.tolist())) == len(got), "duplicate candidates"
        if excluded is not None:
            assert not excluded.cpu().numpy()[got].any(), "an excluded row was returned"
        np.testing.assert_allclose(values[j][: len(got)], S[j, got], rtol=0, atol=tol)
        assert np.all(np.diff(values[j][: len(got)]) <= 0), "not sorted"
        # Same multiset of scores as the reference, within rounding.
        np.testing.assert_allclose(np.sort(S[j, got]), np.sort(rv[j][: len(got)]), rtol=0, atol=2 * tol)


def _round_set(picks, vals, room):
    """The SPEC's S_t from determined picks: dedup by first centroid, truncate by value."""
    items, value, first = [], {}, {}
    for j, i in enumerate(picks):
        if i not in value:
            items.append(i)
            value[i], first[i] = vals[j], j
        else:
            value[i] = max(value[i], vals[j])
    if len(items) <= room:
        return items
    keep = set(sorted(items, key=lambda i: (-value[i], first[i]))[:room])
    return [i for i in items if i in keep]


def assert_valid(result, U, metric, budget, tau, patience, dtype=torch.float32):
    """Replays `result` and checks every round against float64 scores within rounding:
    where no two candidates are within rounding of each other the round must be exactly
    the SPEC's; elsewhere every added item must be a near-best pick. Exact duplicate rows
    must always resolve to the smallest index."""
    C = result.centroids.to(dtype)
    S = scores64(C, U, metric)
    tol = tolerance(C, U, metric)
    k, N = S.shape
    U64 = U.double().cpu()
    selected = torch.zeros(N, dtype=torch.bool)
    idx = result.indices.tolist()
    sizes = result.round_sizes.tolist()
    assert len(sizes) == len(result.round_scores) >= 1
    assert sum(sizes) == len(idx) and len(set(idx)) == len(idx)
    pos, threshold, strict_rounds = 0, None, 0
    for t, (g_fast, size) in enumerate(zip(result.round_scores.tolist(), sizes), start=1):
        masked = S.masked_fill(selected, float("-inf"))
        best, picks = masked.max(dim=1)
        g = best.mean().item()
        assert abs(g - g_fast) <= tol, f"round {t}: g={g_fast}, float64 says {g}"
        if tau is not None and t == patience:
            threshold = tau * g_fast
        stop = tau is not None and t > patience and g_fast < threshold
        last = t == len(sizes)
        if stop:
            assert last and size == 0 and result.stop_reason == "criterion", f"round {t} should stop"
            break
        added = idx[pos : pos + size]
        assert 1 <= size <= k
        for i in added:
            assert not selected[i], f"round {t}: {i} selected twice"
            assert bool((masked[:, i] >= best - tol).any()), f"round {t}: {i} is nobody's near-best"
            dup = ((U64 == U64[i]).all(1) & ~selected).nonzero()[0, 0].item()
            assert dup == i, f"round {t}: {i} taken before its exact duplicate {dup}"
        near = (masked >= (best - tol)[:, None]).sum(1)
        if bool((near == 1).all()):  # picks determined: the round must be exactly SPEC's
            want = _round_set(picks.tolist(), best.tolist(), budget - pos)
            values = sorted(best.tolist())
            separated = all(b - a > tol for a, b in zip(values, values[1:]) if a != b)
            if len(set(picks.tolist())) <= budget - pos or separated:
                assert added == want, f"round {t}: added {added}, SPEC says {want}"
                strict_rounds += 1
        selected[added] = True
        pos += size
    n_sel = len(idx)
    if result.stop_reason == "budget":
        assert n_sel == budget
    elif result.stop_reason == "exhausted":
        assert n_sel == N
    else:
        assert result.stop_reason == "criterion" and tau is not None
    return strict_rounds
