"""Open-sets given as memmaps, .npy paths and shards select exactly as in memory."""
import numpy as np
import pytest
import torch

from simcore_ext import select_coreset
from simcore_ext.sources import OpenSet


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 12, generator=g), torch.randn(1000, 12, generator=g)


KW = dict(k=5, budget=100, tau=0.95, patience=2)


def test_memmap_path_and_shards_equal_in_memory(tmp_path, data):
    X, U = data
    ref = select_coreset(X, U, **KW)
    np.save(tmp_path / "u.npy", U.numpy())
    mm = np.load(tmp_path / "u.npy", mmap_mode="r")
    parts = [U[:300], U[300:301], U[301:700], U[700:]]
    for i, p in enumerate(parts):
        np.save(tmp_path / f"s{i}.npy", p.numpy())
    cases = {
        "memmap": mm,
        "path": str(tmp_path / "u.npy"),
        "pathlib": tmp_path / "u.npy",
        "numpy": U.numpy(),
        "tensor shards": parts,
        "path shards": [str(tmp_path / f"s{i}.npy") for i in range(4)],
        "mixed shards": [parts[0], parts[1].numpy(), str(tmp_path / "s2.npy"), np.load(tmp_path / "s3.npy", mmap_mode="r")],
    }
    for name, src in cases.items():
        for chunk in (None, 1, 333):
            r = select_coreset(X, src, chunk_size=chunk, **KW)
            assert torch.equal(r.indices, ref.indices), (name, chunk)
            assert torch.equal(r.round_scores, ref.round_scores), (name, chunk)


def test_float64_big_endian_and_fortran_files(tmp_path, data):
    X, U = data
    ref = select_coreset(X, U, **KW)
    U64 = U.double().numpy()
    np.save(tmp_path / "f64.npy", U64)
    np.save(tmp_path / "be.npy", U.numpy().astype(">f4"))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(U.numpy()))
    for f in ("f64.npy", "be.npy", "fortran.npy"):
        r = select_coreset(X, str(tmp_path / f), chunk_size=77, **KW)
        assert torch.equal(r.indices, ref.indices), f
    assert torch.equal(select_coreset(X, U.double(), **KW).indices, ref.indices)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_half_memmap_equals_half_tensor(tmp_path, data, dtype):
    X, U = data
    Uh = U.numpy().astype(dtype)
    np.save(tmp_path / "h.npy", Uh)
    a = select_coreset(X, torch.from_numpy(Uh), **KW)
    b = select_coreset(X, str(tmp_path / "h.npy"), chunk_size=100, **KW)
    assert torch.equal(a.indices, b.indices)


def test_openset_metadata(tmp_path, data):
    _, U = data
    np.save(tmp_path / "a.npy", U[:10].numpy())
    s = OpenSet([U[10:], str(tmp_path / "a.npy")])
    assert s.n == 1000 and s.d == 12 and s.compute_dtype == torch.float32
    assert s.locate(990)[1] == 0 and s.locate(989)[1] == 989
    assert OpenSet(U.half()).compute_dtype == torch.float16
    assert OpenSet([U.half(), U.float()]).compute_dtype == torch.float32


def test_chunks_are_bounded(tmp_path, data):
    _, U = data
    np.save(tmp_path / "u.npy", U.numpy())
    s = OpenSet(str(tmp_path / "u.npy"))
    sizes = [rows.shape[0] for _, rows, _ in s.chunks(64, torch.device("cpu"))]
    assert max(sizes) == 64 and sum(sizes) == 1000


def test_bad_files(tmp_path, data):
    X, U = data
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        select_coreset(X, str(tmp_path / "missing.npy"))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="junk.npy"):
        select_coreset(X, str(tmp_path / "junk.npy"))
    np.save(tmp_path / "one_d.npy", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"one_d.npy.*2-D"):
        select_coreset(X, str(tmp_path / "one_d.npy"))
    np.save(tmp_path / "ints.npy", np.zeros((5, 12), np.int32))
    with pytest.raises(TypeError, match=r"ints.npy.*floating"):
        select_coreset(X, str(tmp_path / "ints.npy"))
    np.save(tmp_path / "wide.npy", np.zeros((5, 13), np.float32))
    with pytest.raises(ValueError, match=r"openset\[1\] has 13 features"):
        select_coreset(X, [U, str(tmp_path / "wide.npy")])
    np.save(tmp_path / "full.npy", U.numpy())
    raw = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match="cut.npy"):
        select_coreset(X, str(tmp_path / "cut.npy"))
