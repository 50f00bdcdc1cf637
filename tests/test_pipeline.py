"""`simcore run`: stages, manifest, skipping, invalidation, --from-stage, interruption."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from simcore.cli import main
from simcore.pipeline import STAGES, Run, RunConfig, fingerprint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
DEFAULT = [s for s in STAGES if s != "whiten"]  # the stages a run without --whiten runs


def _images(root, classes, per_class, seed, size=16):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = os.path.join(root, f"class{c}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), np.uint8) + np.uint8(40 * c)  # class-dependent tone
            img = np.clip(base + rng.integers(0, 120, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, f"{i:03d}.png"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline-data")
    _images(str(root / "train"), 3, 12, 0)
    _images(str(root / "test"), 3, 4, 1)
    _images(str(root / "openset"), 4, 10, 2)
    with open(root / "groups.tsv", "w") as f:
        f.write("folder\tgroup\nclass0\ttarget-class\nclass1\ttarget-class\nclass2\tother\nclass3\tother\n")
    return root


def config(data, out, **kw):
    base = dict(target=str(data / "train"), openset=[str(data / "openset")], out=str(out),
                test=str(data / "test"), arch="resnet18-w0.125", epochs=2, batch_size=16, lr=0.1,
                warmup_epochs=1, image_size=16, k=4, budget=8, tau=None, linear_epochs=5,
                compare_random=True, openset_groups=str(data / "groups.tsv"), cache_dir=str(data / "cache"))
    base.update(kw)
    return RunConfig(**base)


def quiet(cfg, from_stage=None):
    lines = []
    manifest = Run(cfg.check(), progress=False, log=lines.append).run(from_stage)
    return manifest, lines


def ran(lines):
    return [line.split("]")[0][1:] for line in lines if line.endswith("running") or line.endswith("resuming")]


def test_full_run_writes_every_stage_and_a_rerun_skips_all(data, tmp_path):
    cfg = config(data, tmp_path / "run")
    manifest, lines = quiet(cfg)
    assert ran(lines) == DEFAULT
    assert all(manifest["stages"][s]["status"] == "done" for s in DEFAULT)
    for rec in manifest["stages"].values():
        for p in rec["outputs"]:
            assert os.path.exists(tmp_path / "run" / p), p
    sel = manifest["stages"]["select"]
    assert sel["items"] == 8
    coreset = open(tmp_path / "run" / "select" / "coreset.txt").read().splitlines()
    assert len(coreset) == 8 and all(p.startswith(str(data / "openset")) for p in coreset)
    # X alone, X + random and X + SimCore ran the same optimizer steps
    steps = manifest["stages"]["pretrain"]["steps"]
    assert steps == 2 * (36 // 16)
    for stage in ("retrain", "baseline"):
        assert manifest["stages"][stage]["steps"] == steps
        rows = open(tmp_path / "run" / stage / "metrics.csv").read().splitlines()[1:]
        assert len(rows) == -(-steps // ((36 + 8) // 16))
    ev = json.load(open(tmp_path / "run" / "eval" / "eval.json"))
    assert set(ev) == {"X", "X + random", "X + SimCore"}
    report = open(tmp_path / "run" / "report" / "report.md").read()
    assert "Composition by open-set group" in report and "X + SimCore" in report
    assert "| nearest to X |" in report and "| nearest to mean |" in report
    assert "pretrain stage's encoder (SSL on X) at 16 px" in report
    mtime = os.stat(tmp_path / "run" / "retrain" / "checkpoint.pt").st_mtime_ns

    manifest2, lines = quiet(cfg)
    assert ran(lines) == []
    assert os.stat(tmp_path / "run" / "retrain" / "checkpoint.pt").st_mtime_ns == mtime
    assert manifest2["stages"]["report"]["stamp"] == manifest["stages"]["report"]["stamp"]


def test_changed_parameter_reruns_that_stage_and_after(data, tmp_path):
    quiet(config(data, tmp_path / "run"))
    _, lines = quiet(config(data, tmp_path / "run", budget=10))
    assert ran(lines) == ["select", "retrain", "baseline", "eval", "report"]
    assert len(open(tmp_path / "run" / "select" / "coreset.txt").read().splitlines()) == 10
    # other centroids, another coreset of the same size: the random baseline stays
    _, lines = quiet(config(data, tmp_path / "run", budget=10, k=3))
    assert ran(lines) == ["centroids", "select", "retrain", "eval", "report"]
    assert "[eval] X: " not in "\n".join(lines) and "[eval] X + SimCore: " in "\n".join(lines)
    _, lines = quiet(config(data, tmp_path / "run", budget=10, k=3, linear_epochs=3))
    assert ran(lines) == ["eval", "report"]
    # the same coreset again (tau is off and the budget binds): no retraining, no evaluation;
    # the report, which prints the settings, is rewritten
    _, lines = quiet(config(data, tmp_path / "run", budget=10, k=3, linear_epochs=3, patience=5))
    assert ran(lines) == ["select", "report"]
    assert "patience 5" in open(tmp_path / "run" / "report" / "report.md").read()


def test_from_stage_forces_a_restart(data, tmp_path):
    quiet(config(data, tmp_path / "run"))
    _, lines = quiet(config(data, tmp_path / "run"), from_stage="retrain")
    # retraining on CPU repeats itself bit for bit: what reads it need not run again
    assert ran(lines) == ["retrain"]
    _, lines = quiet(config(data, tmp_path / "run"), from_stage="centroids")
    assert ran(lines) == ["centroids"]  # the same centroids: select need not run
    _, lines = quiet(config(data, tmp_path / "run"), from_stage="eval")
    assert ran(lines) == ["eval"] and sum(line.startswith("[eval] X") for line in lines) == 3
    with pytest.raises(ValueError, match="unknown stage"):
        quiet(config(data, tmp_path / "run"), from_stage="nope")


def test_a_report_without_plots_is_redone_once_matplotlib_is_there(data, tmp_path, monkeypatch):
    from simcore import plots
    if not plots.available():
        pytest.skip("needs matplotlib")
    monkeypatch.setattr(plots, "available", lambda: False)
    manifest, _ = quiet(config(data, tmp_path / "run"))
    assert manifest["stages"]["report"]["outputs"] == ["report/report.md"]
    assert "No plots" in open(tmp_path / "run" / "report" / "report.md").read()
    monkeypatch.undo()
    manifest, lines = quiet(config(data, tmp_path / "run"))
    assert ran(lines) == ["report"] and "report/rounds.png" in manifest["stages"]["report"]["outputs"]


def test_changed_data_is_noticed(data, tmp_path):
    import shutil
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    quiet(config(mine, tmp_path / "run", compare_random=False))
    before = fingerprint(str(mine / "openset"))
    p = mine / "openset" / "class3" / "009.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p)
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9))
    assert fingerprint(str(mine / "openset")) != before
    _, lines = quiet(config(mine, tmp_path / "run", compare_random=False))
    assert ran(lines)[0] == "extract" and "select" in ran(lines) and "pretrain" not in ran(lines)
    # one open-set folder fewer: a coreset of the remaining images only
    shutil.rmtree(mine / "openset" / "class3")
    manifest, lines = quiet(config(mine, tmp_path / "run", compare_random=False))
    assert ran(lines)[0] == "extract" and "select" in ran(lines)
    assert manifest["stages"]["select"]["openset"] == 30
    assert all("class3" not in p for p in open(tmp_path / "run" / "select" / "coreset.txt").read().splitlines())


def test_retraining_matches_the_steps_pretraining_ran(data, tmp_path):
    """Unreadable target images skipped: X alone trained on fewer images than listed, and
    retraining must match the steps it really ran (31 images of batch 16: 1 per epoch)."""
    import shutil
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    for i in range(5):
        (mine / "train" / "class0" / f"{i:03d}.png").write_bytes(b"not an image")
    cfg = config(mine, tmp_path / "run", compare_random=False, test=None, skip_bad_images=True,
                 cache_dir=str(tmp_path / "cache"))
    manifest, _ = quiet(cfg)
    assert manifest["stages"]["pretrain"]["images"] == 31
    assert manifest["stages"]["pretrain"]["steps"] == manifest["stages"]["retrain"]["steps"] == 2
    rows = open(tmp_path / "run" / "retrain" / "metrics.csv").read().splitlines()[1:]
    assert len(rows) == 1  # (31 + 8) // 16 = 2 steps per epoch: both steps fit in one epoch


def test_interrupted_stage_resumes_and_earlier_ones_are_kept(data, tmp_path, monkeypatch):
    cfg = config(data, tmp_path / "run")

    def boom(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "stage_eval", boom)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg)
    m = json.load(open(tmp_path / "run" / "manifest.json"))
    assert m["stages"]["eval"]["status"] == "running"
    monkeypatch.undo()
    _, lines = quiet(cfg)
    assert ran(lines) == ["eval", "report"] and "[eval] resuming" in lines


def test_kill_9_then_rerun_completes(data, tmp_path):
    """A real SIGKILL in the middle of retraining: the rerun resumes it (from its last
    epoch), keeps every finished stage, and ends with the same artefacts as always."""
    out = tmp_path / "run"
    args = [sys.executable, "-P", "-c", "import sys; from simcore.cli import main; sys.exit(main(sys.argv[1:]))",
            "run", "--target", str(data / "train"), "--openset", str(data / "openset"), "--test", str(data / "test"),
            "--out", str(out), "--arch", "resnet18-w0.125", "--epochs", "12", "--batch-size", "16",
            "--image-size", "16", "--k", "4", "--budget", "8", "--tau", "none", "--linear-epochs", "3",
            "--cache-dir", str(data / "cache"), "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    killed = False
    while proc.poll() is None and time.time() < deadline:
        metrics = out / "retrain" / "metrics.csv"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:  # >= 2 epochs done
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    before = metrics.read_text().splitlines()
    proc.wait()
    assert killed, "the run ended before its retraining could be interrupted"
    m = json.load(open(out / "manifest.json"))
    assert m["stages"]["retrain"]["status"] == "running"
    rerun = subprocess.run(args, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    m = json.load(open(out / "manifest.json"))
    assert all(m["stages"][s]["status"] == "done" for s in DEFAULT if s != "baseline")
    assert "[pretrain] up to date (skipped)" in rerun.stdout and "[retrain] resuming" in rerun.stdout
    after = open(out / "retrain" / "metrics.csv").read().splitlines()
    rows = [r.split(",")[0] for r in after[1:]]
    assert rows == [str(e) for e in range(1, len(rows) + 1)]
    # the epochs finished before the kill were kept, not trained again (their timings survive;
    # the last one may be dropped when the kill fell between its metrics row and checkpoint)
    assert after[:len(before) - 1] == before[:-1] and len(before) >= 3


def test_a_live_run_holds_the_folder(data, tmp_path):
    out = tmp_path / "run"
    os.makedirs(out)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(out / '.lock')!r}, os.O_CREAT | os.O_RDWR)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242')\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match=r"another simcore run \(pid 4242\)"):
            quiet(config(data, out))
    finally:
        holder.kill()  # as kill -9: the kernel drops its lock
        holder.wait()
    quiet(config(data, out, compare_random=False, test=None))


def test_relative_paths_and_turning_the_baseline_off(data, tmp_path, monkeypatch):
    """Relative --target/--openset/--out (the demo's default), then --compare-random off:
    the baseline's folder goes, the report no longer reads it."""
    import shutil
    shutil.copytree(data, tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    rel = config(data, "run", target="d/train", openset=["d/openset"], test="d/test",
                 openset_groups="d/groups.tsv", cache_dir="cache")
    quiet(rel)
    assert all(os.path.isabs(p) and os.path.exists(p) for p in open("run/select/coreset.txt").read().splitlines())
    rel.compare_random = False
    rel.budget = 6
    manifest, lines = quiet(rel)
    assert "baseline" not in manifest["stages"] and not os.path.exists("run/baseline")
    assert "| random |" in open("run/report/report.md").read()  # drawn afresh, of the new size


def test_out_folders_that_are_not_runs_are_refused(data, tmp_path):
    foreign = tmp_path / "mine"
    (foreign / "features").mkdir(parents=True)
    (foreign / "features" / "precious.npy").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="holds features but no manifest.json"):
        quiet(config(data, foreign))
    assert (foreign / "features" / "precious.npy").exists()
    with pytest.raises(ValueError, match="inside the data folder"):
        quiet(config(data, data / "openset" / "run"))
    # a list names its files: a run folder beside it is fine
    listed = tmp_path / "lists" / "u.txt"
    listed.parent.mkdir()
    listed.write_text("".join(f"{p}\n" for p in sorted((data / "openset" / "class0").iterdir())))
    config(data, tmp_path / "lists" / "run", openset=[str(listed)]).check()
    with pytest.raises(ValueError, match="the open-set must be image files"):
        quiet(config(data, tmp_path / "r", openset=["torchvision:cifar10"]))
    with pytest.raises(ValueError, match="different classes"):
        quiet(config(data, tmp_path / "r", test=str(data / "openset")))


def test_without_test_or_baseline(data, tmp_path):
    manifest, lines = quiet(config(data, tmp_path / "run", compare_random=False, test=None))
    assert ran(lines) == ["pretrain", "extract", "centroids", "select", "retrain", "report"]
    assert "eval" not in manifest["stages"] and "baseline" not in manifest["stages"]


@pytest.mark.parametrize("argv, message", [
    (["--target", "/nonexistent/x"], "no such dataset folder: /nonexistent/x"),
    (["--openset", "/nonexistent/u"], "no such dataset folder: /nonexistent/u"),
    (["--test", "/nonexistent/t"], "no such dataset folder: /nonexistent/t"),
    (["--k", "0"], "k must be"),
    (["--seed", "-1"], "seed must be >= 0"),
    (["--tau", "1.5"], "tau"),
    (["--budget", "0"], "budget"),
    (["--arch", "vgg"], "unknown architecture"),
    (["--openset-groups", "/nonexistent.tsv"], "no such open-set groups file"),
    (["--device", "gpu0"], "is not a device"),
    (["--budget", "0.001"], "less than one item"),
    (["--openset", "torchvision:cifar10"], "the open-set must be image files"),
    (["--retrieval-encoder", "/nonexistent/c.pt"], "no such checkpoint /nonexistent/c.pt"),
    (["--retrieval-encoder", "torchvision:resnet51"], "no classification model 'resnet51'"),
    (["--retrieval-encoder", "imagenet"], "unknown retrieval encoder 'imagenet'"),
    (["--retrieval-size", "4"], "retrieval size"),
])
def test_bad_arguments_fail_before_any_work(data, tmp_path, capsys, argv, message):
    base = {"--target": str(data / "train"), "--openset": str(data / "openset"), "--out": str(tmp_path / "run")}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    args = ["run"] + [x for kv in base.items() for x in kv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not os.path.exists(tmp_path / "run")


def test_an_empty_openset_or_a_bad_budget_fails_before_any_work(data, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    base = ["run", "--target", str(data / "train"), "--out", str(tmp_path / "run")]
    assert main(base + ["--openset", str(data / "openset"), "--openset", str(tmp_path / "empty")]) == 2
    assert "holds no images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse's own exit
        main(base + ["--openset", str(data / "openset"), "--budget", "abc"])
    assert e.value.code == 2
    assert "budget must look like 1%, 0.01 or 5000, got 'abc'" in capsys.readouterr().err.splitlines()[-1]
    assert not os.path.exists(tmp_path / "run")


def test_select_alone_on_feature_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "X.npy", rng.standard_normal((30, 8)).astype(np.float32))
    np.save(tmp_path / "U.npy", rng.standard_normal((200, 8)).astype(np.float32))
    assert main(["select", "--target-features", str(tmp_path / "X.npy"), "--openset-features",
                 str(tmp_path / "U.npy"), "--out", str(tmp_path / "sel"), "--k", "5", "--budget", "20",
                 "--quiet"]) == 0
    assert json.load(open(tmp_path / "sel" / "selection.json"))["items"] == 20
    (tmp_path / "afile").write_text("")
    assert main(["select", "--target-features", str(tmp_path / "X.npy"), "--openset-features",
                 str(tmp_path / "U.npy"), "--out", str(tmp_path / "afile"), "--quiet"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_another_retrieval_encoder_keys_on_its_weights(data, tmp_path):
    """A foreign checkpoint selects: extraction keys on its content (not on pretrain, not on
    its path); retraining and evaluation are those of the X-encoder run; the reference
    samplers read the same features."""
    import shutil
    quiet(config(data, tmp_path / "a"))
    enc = tmp_path / "enc.pt"
    shutil.copy(tmp_path / "a" / "pretrain" / "checkpoint.pt", enc)
    cfg = config(data, tmp_path / "b", retrieval_encoder=str(enc), retrieval_size=24)
    manifest, lines = quiet(cfg)
    assert ran(lines) == DEFAULT
    assert manifest["stages"]["extract"]["encoder_size"] == 24
    a = np.load(tmp_path / "a" / "features" / "openset_0.npy")
    b = np.load(tmp_path / "b" / "features" / "openset_0.npy")
    assert a.shape == b.shape and not np.array_equal(a, b)  # 24 px, not the run's 16
    assert f"`{enc}` at 24 px" in open(tmp_path / "b" / "report" / "report.md").read()
    _, lines = quiet(cfg)
    assert ran(lines) == []
    os.utime(enc)  # touched, same weights: nothing to redo
    _, lines = quiet(cfg)
    assert ran(lines) == []
    shutil.copy(tmp_path / "a" / "retrain" / "checkpoint.pt", enc)  # other weights
    _, lines = quiet(cfg)
    assert "pretrain" not in ran(lines) and ran(lines)[0] == "extract"
    _, lines = quiet(config(data, tmp_path / "b", retrieval_size=24))  # back to the X encoder
    assert ran(lines)[0] == "extract"


def test_whiten_stage_selects_on_whitened_features_and_keys_only_when_on(data, tmp_path):
    """--whiten D: a whiten stage between extract and centroids (fitted on U's features);
    centroids, selection and report read the whitened rows. Turning it on re-runs from
    whiten; turning it off again gives back the raw run's keys and coreset."""
    from simcore.whiten import Whitening
    from simcore_ext import select_coreset
    out = tmp_path / "run"
    raw, _ = quiet(config(data, out))
    manifest, lines = quiet(config(data, out, whiten=6))
    assert ran(lines)[:3] == ["whiten", "centroids", "select"]
    assert "pretrain" not in ran(lines) and "extract" not in ran(lines)
    w = Whitening.load(str(out / "whitened" / "whitening.npz"))
    assert w.dim == 6 and w.rows == 40
    X, U = np.load(out / "features" / "target.npy"), np.load(out / "features" / "openset_0.npy")
    np.testing.assert_array_equal(np.load(out / "whitened" / "target.npy"), w.apply(X).astype(X.dtype))
    np.testing.assert_array_equal(np.load(out / "whitened" / "openset_0.npy"), w.apply(U).astype(U.dtype))
    assert np.load(out / "centroids" / "centroids.npy").shape == (4, 6)
    C = np.load(out / "centroids" / "centroids.npy")
    want = select_coreset(None, [str(out / "whitened" / "openset_0.npy")], centroids=C, budget=8, tau=None,
                          seed=0, progress=False)
    from simcore_ext import CoresetResult
    np.testing.assert_array_equal(CoresetResult.load(str(out / "select" / "coreset.npz")).indices, want.indices)
    assert "PCA-whitened to 6 dimensions" in open(out / "report" / "report.md").read()
    manifest2, lines = quiet(config(data, out, whiten=6))
    assert ran(lines) == []
    back, lines = quiet(config(data, out))
    assert not os.path.exists(out / "whitened") and "whiten" not in back["stages"]
    for stage in ("centroids", "select"):
        assert back["stages"][stage]["key"] == raw["stages"][stage]["key"]


def test_whiten_too_wide_is_a_one_line_error_before_any_training(data, tmp_path, capsys):
    """Too few open-set rows, or more dimensions than the X encoder's features: refused when
    the run starts, not after pretraining and extraction."""
    common = ["--target", str(data / "train"), "--out", str(tmp_path / "run"), "--arch", "resnet18-w0.125",
              "--epochs", "1", "--batch-size", "16", "--image-size", "16", "--k", "4", "--budget", "8",
              "--cache-dir", str(data / "cache"), "--quiet"]
    assert main(["run", "--openset", str(data / "openset"), "--whiten", "40"] + common) == 2
    assert "needs more than 40 open-set rows, got 40" in capsys.readouterr().err
    # 80 rows, but resnet18-w0.125's features are 64 wide
    assert main(["run", "--openset", str(data / "openset"), "--openset", str(data / "openset"),
                 "--whiten", "70"] + common) == 2
    assert "features are 64 wide; choose at most 64" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # --resample selects with the retraining encoder (--arch) whatever --retrieval-encoder is
    two = dict(openset=[str(data / "openset")] * 2, whiten=70, resample=1)
    (tmp_path / "other.pt").write_bytes(b"")  # named only: check() does not load it
    with pytest.raises(ValueError, match="features are 64 wide"):
        config(data, tmp_path / "run", retrieval_encoder=str(tmp_path / "other.pt"), **two).check()
    # without --resample that encoder's width is unknown before it is loaded: not refused
    config(data, tmp_path / "run", retrieval_encoder=str(tmp_path / "other.pt"), **dict(two, resample=0)).check()
    # an ImageNet retrieval encoder's width is its architecture's: refused before anything runs
    with pytest.raises(ValueError, match="retrieval encoder torchvision:resnet18's features are 512 wide"):
        config(data, tmp_path / "run", retrieval_encoder="torchvision:resnet18", openset=two["openset"],
               whiten=600).check()
    assert main(["run", "--openset", str(data / "openset"), "--retrieval-encoder", "torchvision:resnet18",
                 "--whiten", "600"] + common) == 2
    assert "features are 512 wide; choose at most 512" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # within its width (though wider than the X encoder's 64) and without --resample: accepted
    config(data, tmp_path / "run", retrieval_encoder="torchvision:resnet18", openset=two["openset"], whiten=70).check()
    assert main(["run", "--target", str(data / "train"), "--openset", str(data / "openset"),
                 "--out", str(tmp_path / "run2"), "--whiten", "-1"]) == 2
    assert "whiten" in capsys.readouterr().err


def test_retrieval_amp_keys_extraction_only_when_on(data, tmp_path):
    def params(stage, **kw):
        r = Run(config(data, tmp_path / "run", **kw), progress=False)
        r.fingerprints = dict(target="x", openset=["u"])
        return r._spec(stage)["params"]
    assert "amp" not in params("extract")  # the keys of runs from before
    assert params("extract", retrieval_amp="bf16")["amp"] == "bf16"
    assert params("whiten", whiten=8) == {"dim": 8}
    with pytest.raises(ValueError, match="retrieval_amp must be off, bf16 or auto"):
        config(data, tmp_path / "run", retrieval_amp="fp16").check()
