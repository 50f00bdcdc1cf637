"""Re-selecting the coreset during retraining (`simcore run --resample N`): the trainer's
segments (`pretrain(until=...)`), the retrain stage's re-selections, exact resume at any
point, and `--resample 0` as before."""
import json
import os
import shutil

import pytest
import torch

import simcore.train as train_mod
from simcore.checkpoint import load_checkpoint
from simcore.cli import main
from simcore.pipeline import Run
from simcore.train import TrainConfig, pretrain
from test_pipeline import config, data, quiet, ran  # noqa: F401 - data: the module's image fixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def weights(path):
    return load_checkpoint(str(path))["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the trainer: a schedule in segments, the data changed between them ---------------------
def train_config(data, out, files, method="simclr"):
    return TrainConfig(data=[files], out=str(out), method=method, arch="resnet18-w0.25", steps=9, warmup_steps=2,
                       batch_size=16, image_size=16, amp="off", cache_dir=str(data / "cache"))


@pytest.fixture(scope="module")
def lists(data):
    """Two training sets: X's 36 images (2 steps an epoch) and 32 others (2 steps an epoch)."""
    x = sorted(str(p) for p in (data / "train").rglob("*.png"))
    u = sorted(str(p) for p in (data / "openset").rglob("*.png"))[:32]
    for name, files in (("a.txt", x), ("b.txt", u)):
        (data / name).write_text("".join(f"{p}\n" for p in files))
    return str(data / "a.txt"), str(data / "b.txt")


def segments(data, out, lists, method):
    """Steps 0-4 on a, 5-8 on b: epochs of 2, 2, 1 (cut at 5), then 2, 2 (b's own)."""
    pretrain(train_config(data, out, lists[0], method), until=5, progress=False)
    pretrain(train_config(data, out, lists[1], method), resume=True, until=9, progress=False)


@pytest.mark.parametrize("method", ["simclr", "byol"])  # BYOL: its target network and EMA schedule go on
def test_segments_keep_the_schedule_and_resume_exactly(data, lists, tmp_path, monkeypatch, method):
    seen = []
    real_lr = train_mod.lr_at
    monkeypatch.setattr(train_mod, "lr_at", lambda step, total, peak, warmup: seen.append((step, total, warmup))
                        or real_lr(step, total, peak, warmup))
    segments(data, tmp_path / "a", lists, method)
    assert seen == [(s, 9, 2) for s in range(9)]  # one schedule over all the steps
    full = load_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))
    assert (full["epoch"], full["step"], full["begin_step"], full["begin_epoch"]) == (5, 9, 5, 3)
    assert [r.split(",")[0] for r in open(tmp_path / "a" / "metrics.csv").read().split()[1:]] == ["1", "2", "3", "4", "5"]
    monkeypatch.setattr(train_mod, "lr_at", real_lr)

    real_save = train_mod.save_checkpoint
    for kill_at in (2, 5, 7):  # mid-segment in a, at the cut, mid-segment in b
        out = tmp_path / f"kill{kill_at}"

        def save_then_die(path, **state):
            real_save(path, **state)
            if state["step"] == kill_at:
                raise KeyboardInterrupt

        monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            segments(data, out, lists, method)
        monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
        if load_checkpoint(str(out / "checkpoint.pt"))["step"] < 5:  # killed in a's segment: a first
            pretrain(train_config(data, out, lists[0], method), resume=True, until=5, progress=False)
        pretrain(train_config(data, out, lists[1], method), resume=True, until=9, progress=False)
        assert same_weights(weights(out / "checkpoint.pt"), full["model"]), kill_at


def test_data_changes_only_where_a_segment_ended(data, lists, tmp_path):
    pretrain(train_config(data, tmp_path / "a", lists[0]), until=3, progress=False)  # epochs of 2, 1: step 3
    pretrain(train_config(data, tmp_path / "b", lists[0]), until=5, progress=False)
    state = load_checkpoint(str(tmp_path / "b" / "checkpoint.pt"))
    state.update(epoch=1, step=2)  # as if killed after its first epoch, mid-segment
    torch.save(state, tmp_path / "b" / "checkpoint.pt")
    with pytest.raises(ValueError, match="another configuration \\(data: "):
        pretrain(train_config(data, tmp_path / "b", lists[1]), resume=True, until=9, progress=False)
    with pytest.raises(ValueError, match="at step 3, past until=2"):
        pretrain(train_config(data, tmp_path / "a", lists[0]), resume=True, until=2, progress=False)
    with pytest.raises(ValueError, match="until must be a step in \\[1, 9\\]"):
        pretrain(train_config(data, tmp_path / "c", lists[0]), until=10, progress=False)
    pretrain(train_config(data, tmp_path / "c", lists[0]), progress=False)  # to the end: no new data after it
    with pytest.raises(ValueError, match="another configuration \\(data: "):
        pretrain(train_config(data, tmp_path / "c", lists[1]), resume=True, progress=False)


def test_checkpoints_from_before_segments_resume_as_they_did(data, lists, tmp_path, monkeypatch):
    """A checkpoint without step, until and the segment's start (older code) resumes at its
    epoch, on the same data."""
    pretrain(train_config(data, tmp_path / "a", lists[0]), progress=False)
    real_save = train_mod.save_checkpoint

    def save_as_before_then_die(path, **state):
        real_save(path, **{k: v for k, v in state.items() if k not in ("step", "until", "begin_step", "begin_epoch")})
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", save_as_before_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(train_config(data, tmp_path / "b", lists[0]), progress=False)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    pretrain(train_config(data, tmp_path / "b", lists[0]), resume=True, progress=False)
    assert same_weights(weights(tmp_path / "a" / "checkpoint.pt"), weights(tmp_path / "b" / "checkpoint.pt"))


# -- the retrain stage ----------------------------------------------------------------------
def rcfg(data, out, **kw):
    """8 retraining steps (36 images, batch 16, 4 epochs); --resample 2 cuts them at 2 and 5."""
    return config(data, out, **dict(dict(epochs=4, test=None, compare_random=False, resample=2), **kw))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted --resample 2 run, with the step of the checkpoint each re-selection read."""
    import simcore.encoders as encoders
    out = tmp_path_factory.mktemp("resample") / "run"
    read = []
    real = encoders.load_encoder

    def spy(spec, *a, **kw):
        if f"{os.sep}retrain{os.sep}" in str(spec):  # not pretrain/
            read.append(load_checkpoint(spec)["step"])
        return real(spec, *a, **kw)

    encoders.load_encoder = spy
    try:
        manifest, lines = quiet(rcfg(data, out))
    finally:
        encoders.load_encoder = real
    return out, manifest, lines, read


def test_resampling_keeps_the_steps_and_reads_the_current_encoder(data, reference, tmp_path, monkeypatch):
    out, manifest, lines, read = reference
    rec = manifest["stages"]["retrain"]
    assert rec["steps"] == manifest["stages"]["pretrain"]["steps"] == 8
    assert read == [2, 5]  # each re-selection: the retraining encoder at its cut
    assert [r["step"] for r in rec["resampled"]] == [2, 5]
    prev = open(out / "select" / "coreset.txt").read().split()
    coresets = [prev]
    for i, r in enumerate(rec["resampled"], 1):
        now = open(out / "retrain" / f"resample_{i}" / "coreset.txt").read().split()
        assert json.load(open(out / "retrain" / f"resample_{i}" / "selection.json")) == r
        assert r["items"] == len(now) == 8
        assert r["overlap"] == len(set(prev) & set(now)) and r["overlap_fraction"] == r["overlap"] / len(prev)
        assert not os.path.exists(out / "retrain" / f"resample_{i}" / "features")  # deleted once saved
        coresets.append(now)
        prev = now
    assert any(c != coresets[0] for c in coresets[1:])  # another encoder, another coreset
    assert sum("[retrain] re-selection" in line and "kept" in line for line in lines) == 2
    report = open(out / "report" / "report.md").read()
    assert "### Re-selections during retraining" in report
    for i, r in enumerate(rec["resampled"], 1):
        assert f"| {i} | {r['step']} | 8 |" in report
    # the learning rate of every step is the one retraining without re-selection takes
    seen = []
    real_lr = train_mod.lr_at
    monkeypatch.setattr(train_mod, "lr_at", lambda step, total, peak, warmup: seen.append((step, total, warmup))
                        or real_lr(step, total, peak, warmup))
    shutil.copytree(out, tmp_path / "run")
    quiet(rcfg(data, tmp_path / "run"), from_stage="retrain")
    again = list(seen)
    seen.clear()
    quiet(rcfg(data, tmp_path / "run", resample=0))
    assert again == seen and [s for s, _, _ in seen] == list(range(8))


def _die_in_retrain(monkeypatch, where):
    """Raises KeyboardInterrupt at `where`: a training step's checkpoint, or the middle of
    re-selection 1's extraction (X's features written, U's not)."""
    import simcore.extract as extract_mod
    if isinstance(where, int):
        real = train_mod.save_checkpoint

        def save_then_die(path, **state):
            real(path, **state)
            if f"{os.sep}retrain{os.sep}" in path and state["step"] == where:
                raise KeyboardInterrupt
        monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    else:
        real = extract_mod.extract

        def extract_then_die(encoder, spec, out, **kw):
            if "resample_1" in out and "openset" in out:
                raise KeyboardInterrupt
            return real(encoder, spec, out, **kw)
        monkeypatch.setattr(extract_mod, "extract", extract_then_die)


@pytest.mark.parametrize("where", [4, 5, "extract"], ids=["mid-segment", "at-a-cut", "mid-re-selection"])
def test_a_killed_retraining_resumes_to_the_same_weights_and_coresets(data, reference, tmp_path, monkeypatch, where):
    ref = reference[0]
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    _die_in_retrain(monkeypatch, where)
    with pytest.raises(KeyboardInterrupt):
        quiet(rcfg(data, out), from_stage="retrain")
    monkeypatch.undo()
    if where == "extract":
        assert (out / "retrain" / "resample_1" / "features" / "target.npy").exists()
    manifest, lines = quiet(rcfg(data, out))
    assert "[retrain] resuming" in lines and ran(lines) == ["retrain"]  # the same weights: nothing after
    assert same_weights(weights(out / "retrain" / "checkpoint.pt"), weights(ref / "retrain" / "checkpoint.pt"))
    from simcore_ext import CoresetResult
    for i in (1, 2):
        a, b = (d / "retrain" / f"resample_{i}" for d in (out, ref))
        assert (a / "coreset.txt").read_text() == (b / "coreset.txt").read_text()
        ra, rb = CoresetResult.load(str(a / "coreset.npz")), CoresetResult.load(str(b / "coreset.npz"))
        assert torch.equal(ra.indices, rb.indices) and torch.equal(ra.round_scores, rb.round_scores)
        assert torch.equal(ra.centroids, rb.centroids)  # the same features: the same encoder
    assert open(out / "retrain" / "metrics.csv").read().count("\n") == 1 + 5  # epochs 2 | 2, 1 | 2, 1 steps


def test_resample_0_is_the_run_of_before_and_the_key_follows_resample(data, tmp_path):
    manifest, _ = quiet(rcfg(data, tmp_path / "run", resample=0))
    assert sorted(os.listdir(tmp_path / "run" / "retrain")) == ["checkpoint.pt", "config.json", "metrics.csv"]
    assert set(manifest["stages"]["retrain"]) == {"status", "key", "stamp", "seconds", "outputs", "epochs",
                                                  "last_loss", "steps", "warmup_steps"}

    def params(stage, **kw):
        r = Run(rcfg(data, tmp_path / "run", **kw), progress=False)
        r.fingerprints = dict(target="x", openset=["u"])
        return r._spec(stage)["params"]
    # the keys of runs from before: retraining is keyed as pretraining, the report as ever
    assert params("retrain", resample=0) == params("pretrain", resample=0)
    assert set(params("report", resample=0)) == {"groups", "plots"}
    assert params("retrain", resample=1)["resample"] == 1 and params("report", resample=1)["resample"] == 1
    assert params("retrain", resample=1, budget=6) != params("retrain", resample=1)  # its selections' settings
    assert params("retrain", resample=1, whiten=4)["whiten"] == 4 and "whiten" not in params("retrain", resample=1)
    assert params("retrain", resample=0, whiten=4) == params("pretrain", resample=0)  # no re-selection to whiten


@pytest.mark.parametrize("argv, message", [
    (["--resample", "-1"], "resample must be >= 0, got -1"),
    (["--resample", "4"], "--resample 4: retraining runs 4 optimizer steps (as many as the pretraining on X) "
                          "and each of its 5 segments needs one: give at most 3"),
])
def test_bad_resample_fails_before_any_work(data, tmp_path, capsys, argv, message):
    args = ["run", "--target", str(data / "train"), "--openset", str(data / "openset"), "--out",
            str(tmp_path / "run"), "--epochs", "2", "--batch-size", "16"] + argv
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not os.path.exists(tmp_path / "run")
    with pytest.raises(SystemExit):
        main(args[:-2] + ["--resample", "two"])
    assert "invalid int value: 'two'" in capsys.readouterr().err


def test_too_many_resamples_for_the_steps_that_ran(data, tmp_path):
    """Up front 36 listed images give 4 steps; with 5 unreadable ones skipped, pretraining
    ran 2: the retrain stage refuses 2 re-selections before training."""
    mine = tmp_path / "data"
    shutil.copytree(data / "train", mine / "train")
    shutil.copytree(data / "openset", mine / "openset")
    for i in range(5):
        (mine / "train" / "class0" / f"{i:03d}.png").write_bytes(b"not an image")
    cfg = config(mine, tmp_path / "run", epochs=2, test=None, compare_random=False, openset_groups=None,
                 skip_bad_images=True, cache_dir=str(tmp_path / "cache"), resample=2)
    with pytest.raises(ValueError, match="retraining runs 2 optimizer steps .* give at most 1"):
        quiet(cfg)
    assert not os.path.exists(tmp_path / "run" / "retrain" / "checkpoint.pt")


def test_resampling_with_whitening_fits_each_encoder_anew(data, tmp_path):
    """--resample with --whiten: every re-selection whitens its encoder's own features
    (fitted anew) and selects on them; the whitened copies are deleted with the features;
    the whitening enters the retraining key."""
    import simcore.whiten as whiten_mod
    fits, real = [], whiten_mod.fit_whitening

    def spy(arrays, dim, **kw):
        w = real(arrays, dim, **kw)
        fits.append((list(arrays), w))
        return w

    whiten_mod.fit_whitening = spy
    try:
        manifest, lines = quiet(rcfg(data, tmp_path / "run", resample=1, whiten=5))
    finally:
        whiten_mod.fit_whitening = real
    assert [os.path.relpath(a[0], tmp_path / "run") for a, _ in fits] == [
        os.path.join("features", "openset_0.npy"), os.path.join("retrain", "resample_1", "features", "openset_0.npy")]
    assert not fits[0][1].mean.tolist() == fits[1][1].mean.tolist()  # another encoder, another fit
    folder = tmp_path / "run" / "retrain" / "resample_1"
    assert not os.path.exists(folder / "features") and not os.path.exists(folder / "whitened")
    assert manifest["stages"]["retrain"]["resampled"][0]["items"] == 8
