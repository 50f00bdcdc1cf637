"""CoresetResult.save/load: lossless, atomic, no pickle."""
import os

import numpy as np
import pytest
import torch

from simcore_ext import CoresetResult, select_coreset


@pytest.fixture
def result():
    g = torch.Generator().manual_seed(0)
    return select_coreset(torch.randn(30, 8, generator=g), torch.randn(500, 8, generator=g),
                          k=6, budget=0.2, patience=2)


def test_roundtrip_is_lossless(tmp_path, result):
    path = tmp_path / "coreset.npz"
    result.save(path)
    back = CoresetResult.load(path)
    assert torch.equal(back.indices, result.indices) and back.indices.dtype == torch.int64
    assert torch.equal(back.round_scores, result.round_scores)
    assert torch.equal(back.round_sizes, result.round_sizes)
    assert torch.equal(back.centroids, result.centroids)
    assert back.stop_reason == result.stop_reason and back.threshold == result.threshold
    assert back.params == result.params and back.stats == result.stats
    assert [p.name for p in tmp_path.iterdir()] == ["coreset.npz"]  # no temporaries left


def test_threshold_none_roundtrips(tmp_path):
    r = select_coreset(torch.randn(4, 3), torch.randn(50, 3), k=2, budget=3, tau=None)
    r.save(tmp_path / "r.npz")
    assert CoresetResult.load(tmp_path / "r.npz").threshold is None


def test_save_is_atomic(tmp_path, result, monkeypatch):
    path = tmp_path / "coreset.npz"
    result.save(path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        result.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["coreset.npz"]


def test_load_refuses_pickles_and_foreign_files(tmp_path):
    np.savez(tmp_path / "obj.npz", meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        CoresetResult.load(tmp_path / "obj.npz")
    np.savez(tmp_path / "other.npz", meta=np.array('{"format": "x"}'))
    with pytest.raises(ValueError, match="not a simcore coreset file"):
        CoresetResult.load(tmp_path / "other.npz")
