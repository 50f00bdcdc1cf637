"""Semi-supervised fine-tuning: the label subset, the training, `simcore eval finetune` and
`simcore run --finetune`."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from simcore import evaluate
from simcore.checkpoint import save_checkpoint
from simcore.cli import main
from simcore.evaluate import finetune, label_subset
from simcore.models import build_backbone

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ARCH = "resnet18-w0.125"


# -- the label subset -------------------------------------------------------------------------

def test_subset_is_class_balanced_seeded_and_of_the_right_size():
    labels = torch.arange(4).repeat_interleave(torch.tensor([100, 40, 20, 10]))
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(3))]
    for fraction, per_class in ((0.1, [10, 4, 2, 1]), (0.2, [20, 8, 4, 2]), (0.5, [50, 20, 10, 5]),
                                (0.25, [25, 10, 5, 3]), (1.0, [100, 40, 20, 10])):  # 2.5 rounds up
        rows, raised = label_subset(labels, fraction, seed=0)
        assert raised == []
        assert rows.numel() == sum(per_class) and rows.unique().numel() == rows.numel()
        assert torch.equal(rows, rows.sort().values)
        assert torch.bincount(labels[rows], minlength=4).tolist() == per_class
        again, _ = label_subset(labels, fraction, seed=0)
        assert torch.equal(rows, again)  # deterministic
    a, b = label_subset(labels, 0.2, seed=0)[0], label_subset(labels, 0.2, seed=1)[0]
    assert not torch.equal(a, b)  # seeded
    small, large = label_subset(labels, 0.1, seed=5)[0], label_subset(labels, 0.5, seed=5)[0]
    assert set(small.tolist()) <= set(large.tolist())  # nested for one seed


def test_subset_rounds_an_empty_class_up_to_one_image():
    labels = torch.tensor([0] * 50 + [1] * 4 + [2] * 3)
    rows, raised = label_subset(labels, 0.1, seed=0)
    assert raised == [1, 2]
    assert torch.bincount(labels[rows]).tolist() == [5, 1, 1]


@pytest.mark.parametrize("fraction", [0, -0.1, 1.01, float("nan"), True])
def test_subset_refuses_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match="label fraction must be in"):
        label_subset(torch.tensor([0, 1, 0, 1]), fraction)


def test_subset_refuses_unlabelled_images():
    with pytest.raises(ValueError, match="unlabelled"):
        label_subset(torch.tensor([0, -1, 1]), 0.5)


# -- fine-tuning ------------------------------------------------------------------------------

def colour_images(per_class, seed, classes=3, size=16):
    """Easy classes: a dominant colour channel each, on noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(per_class)
    x = torch.randint(0, 90, (y.numel(), 3, size, size), generator=g)
    x[torch.arange(y.numel()), y] += 150
    return x.to(torch.uint8), y


def test_finetune_learns_an_easy_task_and_trains_the_whole_backbone():
    (xtr, ytr), (xte, yte) = colour_images(12, 0), colour_images(10, 1)
    torch.manual_seed(0)
    backbone = build_backbone(ARCH, small_images=True)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    acc = finetune(backbone, xtr, ytr, xte, yte, epochs=15, batch_size=12, amp="off")
    assert acc["top1"] >= 90 and acc["mean_per_class"] >= 90
    after = backbone.state_dict()
    changed = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    floats = [k for k, v in after.items() if v.is_floating_point()]
    assert changed == floats  # every weight and BatchNorm statistic moved, from conv1 to layer4


def test_finetune_repeats_itself_for_a_seed():
    (xtr, ytr), (xte, yte) = colour_images(6, 0), colour_images(4, 1)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(0)
        b = build_backbone(ARCH, small_images=True)
        acc = finetune(b, xtr, ytr, xte, yte, epochs=2, batch_size=8, seed=seed, amp="off")
        runs.append((acc, b.layer4[0].conv1.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_finetune_refuses_bad_input():
    (x, y) = colour_images(2, 0)
    b = build_backbone(ARCH, small_images=True)
    with pytest.raises(ValueError, match="uint8"):
        finetune(b, x.float(), y, x, y)
    with pytest.raises(ValueError, match="one label per image"):
        finetune(b, x, y[:-1], x, y)
    with pytest.raises(ValueError, match="one size"):
        finetune(b, x, y, x[:, :, :8, :8], y)
    with pytest.raises(ValueError, match="epochs"):
        finetune(b, x, y, x, y, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        finetune(b, x, y, x, y, lr=float("nan"))
    with pytest.raises(ValueError, match="unlabelled"):
        finetune(b, x, y, x, torch.full_like(y, -1))


# -- simcore eval finetune --------------------------------------------------------------------

def write_images(root, per_class, seed, classes=("blue", "green", "red"), size=16):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size, 3))
            img[..., 2 - c] += 150  # blue, green, red: channel 2, 1, 0
            Image.fromarray(img.astype(np.uint8)).save(os.path.join(d, f"{i:03d}.png"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-data")
    write_images(str(root / "train"), 20, 0)
    write_images(str(root / "test"), 8, 1)
    write_images(str(root / "other"), 4, 2, classes=("blue", "green", "violet"))
    torch.manual_seed(0)
    backbone = build_backbone(ARCH, small_images=True)
    save_checkpoint(str(root / "checkpoint.pt"), model={f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                    config=dict(arch=ARCH, image_size=16))
    return root


def sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def test_eval_finetune_command(folders, tmp_path, capsys):
    ckpt = str(folders / "checkpoint.pt")
    digest, mtime = sha1(ckpt), os.stat(ckpt).st_mtime_ns
    base = ["eval", "finetune", "--checkpoint", ckpt, "--train", str(folders / "train"), "--test",
            str(folders / "test"), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--amp", "off"]
    out = tmp_path / "res" / "finetune.json"
    assert main(base + ["--label-fraction", "0.5", "--epochs", "12", "--batch-size", "10", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["labelled_images"] == 30 and printed["label_fraction"] == 0.5
    assert printed["finetune_top1"] >= 90 and printed["finetune_mean_per_class"] >= 90
    assert json.loads(out.read_text()) == printed
    assert os.listdir(out.parent) == ["finetune.json"]  # no temporary left beside it
    assert sha1(ckpt) == digest and os.stat(ckpt).st_mtime_ns == mtime  # the checkpoint is only read
    # a fraction that leaves classes empty: one image each, and said so
    assert main(base + ["--label-fraction", "0.01", "--epochs", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["labelled_images"] == 3
    assert captured.err.count("\n") == 1 and "rounded up to one image each" in captured.err


@pytest.mark.parametrize("argv, message", [
    (["--label-fraction", "0"], "--label-fraction must be in (0, 1], got 0.0"),
    (["--label-fraction", "1.5"], "--label-fraction must be in (0, 1], got 1.5"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--checkpoint", "/nonexistent/c.pt"], "no checkpoint at /nonexistent/c.pt"),
    (["--test", "OTHER"], "train and test have different classes"),
])
def test_eval_finetune_one_line_errors(folders, tmp_path, capsys, argv, message):
    argv = [str(folders / "other") if a == "OTHER" else a for a in argv]
    base = ["eval", "finetune", "--checkpoint", str(folders / "checkpoint.pt"), "--train", str(folders / "train"),
            "--test", str(folders / "test"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


# -- simcore run --finetune -------------------------------------------------------------------

def test_run_finetune_reports_and_resumes_without_recomputing(folders, tmp_path, monkeypatch):
    from simcore.pipeline import Run, RunConfig
    write_images(str(tmp_path / "openset"), 6, 3, classes=("a", "b", "c", "d"))
    out = tmp_path / "run"

    def config(**kw):
        base = dict(target=str(folders / "train"), openset=[str(tmp_path / "openset")], out=str(out),
                    test=str(folders / "test"), arch=ARCH, epochs=1, batch_size=16, lr=0.1, warmup_epochs=0,
                    image_size=16, k=3, budget=6, tau=None, linear_epochs=3, finetune_epochs=2,
                    cache_dir=str(tmp_path / "cache"), amp="off")
        base.update(kw)
        return RunConfig(**base).check()

    calls = []
    real = evaluate.finetune

    def counted(*args, **kw):
        calls.append(kw["desc"])
        if len(calls) == fail_at[0]:
            raise KeyboardInterrupt  # killed in the middle of the eval stage
        return real(*args, **kw)
    monkeypatch.setattr(evaluate, "finetune", counted)

    def go(cfg):
        lines = []
        Run(cfg, progress=False, log=lines.append).run()
        return lines

    fail_at = [4]  # X and X + SimCore at 0.1 and 0.5: dies on the last of the four
    with pytest.raises(KeyboardInterrupt):
        go(config(finetune=[0.5, 0.1]))
    assert len(calls) == 4
    fail_at = [0]
    calls.clear()
    lines = go(config(finetune=[0.5, 0.1]))
    assert "[eval] resuming" in lines
    assert calls == ["finetune X + SimCore, 50% of the labels"]  # only the missing one
    assert not any(line.startswith("[eval] X: linear") for line in lines)
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert set(ev) == {"X", "X + SimCore"}
    for label in ev:
        assert set(ev[label]["finetune"]) == {"0.1", "0.5"}
        assert ev[label]["finetune"]["0.1"]["images"] == 6 and ev[label]["finetune"]["0.5"]["images"] == 30
    report = (out / "report" / "report.md").read_text()
    assert "Semi-supervised fine-tuning" in report and "10% labels: top-1" in report

    calls.clear()  # a rerun: nothing at all
    lines = go(config(finetune=[0.1, 0.5]))
    assert calls == [] and "[eval] up to date (skipped)" in lines
    # one more fraction: only its two fine-tunings; no linear probe or kNN again
    monkeypatch.setattr(evaluate, "linear_probe", lambda *a, **k: pytest.fail("linear probe recomputed"))
    lines = go(config(finetune=[0.1, 0.5, 0.2]))
    assert len(calls) == 2 and all("20%" in c for c in calls)
    # dropping them: their files go, the others stay and are not recomputed
    calls.clear()
    go(config(finetune=[0.5]))
    assert calls == []
    assert sorted(os.listdir(out / "eval")) == ["eval.json", "pretrain.finetune-0.5.json", "pretrain.json",
                                                 "retrain.finetune-0.5.json", "retrain.json"]
    # and without --finetune the eval key is the one from before fine-tuning existed
    go(config(finetune=[]))
    assert "finetune" not in json.loads((out / "eval" / "eval.json").read_text())["X"]


def test_eval_help_documents_finetune():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "simcore", "eval", "--help"], capture_output=True, text=True,
                         cwd="/").stdout
    for text in ("finetune", "--label-fraction", "default: 0.1", "finetune 50", "finetune 0.05", "default: 64"):
        assert text in out, text


def test_eval_finetune_refuses_a_nan_fraction(folders, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "finetune", "--checkpoint", "c.pt", "--train", "t", "--test", "t", "--label-fraction", "nan"])
    assert e.value.code == 2 and "expected a finite number" in capsys.readouterr().err


def test_run_finetune_arguments(folders, tmp_path, capsys):
    base = ["run", "--target", str(folders / "train"), "--openset", str(folders / "other"), "--out",
            str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(base + ["--test", str(folders / "test"), "--finetune", "0.1", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--finetune label fractions must be in (0, 1], got 1.5" in err
    assert main(base + ["--finetune", "0.1"]) == 2
    assert "--finetune needs --test" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")
