"""The reference samplers (nearest to X, nearest to the mean) against a float64 brute force,
with ties and duplicate rows, over shards and chunk sizes."""
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simcore.samplers import _top, nearest_to_mean, nearest_to_target


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.integers(-3, 3), min_size=1, max_size=80), cuts=st.lists(st.integers(1, 9), max_size=12),
       data=st.data())
def test_streamed_top_is_a_stable_sort(scores, cuts, data):
    """The running top over chunks = a stable sort of all scores (exact ties: integer scores)."""
    size = data.draw(st.integers(1, len(scores)))
    s = torch.tensor(scores, dtype=torch.float32)
    bounds = np.cumsum([0] + cuts)
    chunks = [s[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if a < len(s)] + [s[min(bounds[-1], len(s)):]]
    want = np.lexsort((np.arange(len(scores)), -np.array(scores)))[:size]
    np.testing.assert_array_equal(_top(iter(chunks), size), want)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 6), N=st.integers(2, 60), d=st.integers(2, 6),
       chunk=st.integers(1, 17), dup=st.booleans(), mean=st.booleans(), data=st.data())
def test_matches_float64_brute_force(seed, n, N, d, chunk, dup, mean, data):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    U = rng.standard_normal((N, d)).astype(np.float32)
    if dup:  # duplicate rows tie exactly: the smaller index first
        U[N // 2:] = U[:N - N // 2]
    size = data.draw(st.integers(1, N - 1))
    s = _scores(X.astype(np.float64), U.astype(np.float64), mean)
    cut = np.sort(np.unique(s))[::-1]
    assume(len(cut) < 2 or np.all(np.abs(np.diff(cut)) > 1e-4))  # float32 cannot reorder them
    got = (nearest_to_mean if mean else nearest_to_target)(X, U, size, chunk_rows=chunk)
    np.testing.assert_array_equal(got, np.lexsort((np.arange(N), -s))[:size])


def _scores(X, U, mean):
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    U = U / np.linalg.norm(U, axis=1, keepdims=True)
    if mean:
        m = X.mean(0)
        return U @ (m / np.linalg.norm(m))
    return (U @ X.T).max(1)


def test_ties_go_to_the_smaller_index_and_shards_concatenate(tmp_path):
    X = np.array([[1.0, 0.0]], np.float32)
    U = np.array([[0, 1], [1, 0], [2, 0], [1, 1], [3, 0], [0, 1]], np.float32)  # rows 1, 2, 4 tie at 1
    assert nearest_to_target(X, U, 2).tolist() == [1, 2]
    assert nearest_to_target(X, U, 4, chunk_rows=1).tolist() == [1, 2, 4, 3]
    np.save(tmp_path / "a.npy", U[:3])
    np.save(tmp_path / "b.npy", U[3:].astype(np.float16))
    assert nearest_to_target(X, [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], 4, chunk_rows=2).tolist() \
        == [1, 2, 4, 3]
    assert nearest_to_mean(np.array([[1, 0], [1, 0.01]], np.float32), U, 3).tolist() == [1, 2, 4]


def test_bad_input():
    X, U = np.ones((2, 3), np.float32), np.ones((5, 3), np.float32)
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="size"):
            nearest_to_target(X, U, size)
    with pytest.raises(ValueError, match="larger than the open-set"):
        nearest_to_mean(X, U, 6)
    with pytest.raises(ValueError, match="non-empty"):
        nearest_to_target(np.zeros((0, 3), np.float32), U, 1)
