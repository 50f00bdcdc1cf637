"""The `simcore` command line: demo, select, pretrain, extract, eval."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from simcore.cli import main
from simcore_ext import CoresetResult, select_coreset


def test_selection_demo_runs_and_saves(tmp_path, capsys):
    assert main(["demo", "--selection-only", "--openset-size", "20000", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stopped (" in out and "coreset: target-class" in out
    r = CoresetResult.load(tmp_path / "coreset.npz")
    assert len(r) > 0 and r.params["n_openset"] == 20000
    assert main(["demo", "--selection-only", "--openset-size", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--openset-size must be a positive number" in err[0]


def test_pipeline_demo_small(tmp_path, capsys, monkeypatch):
    """The demo's wiring at a toy size (the real one takes minutes): generated data, every
    stage, the comparison and the composition printed, the report and plots written; a
    rerun skips everything."""
    from simcore import demo, plots
    monkeypatch.setattr(demo, "DEMO_DATA", dict(train_per_class=12, test_per_class=4, openset_size=200,
                                                share_target=0.1, share_related=0.2))
    monkeypatch.setattr(demo, "DEMO", dict(arch="resnet18-w0.125", epochs=2, batch_size=32, lr=0.1,
                                           warmup_epochs=1, k=6, budget=0.1, linear_epochs=5))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    for line in ("X + random", "X + SimCore", "coreset: 20 of 200 open-set images",
                 "X + SimCore, linear: ", " against X + random (one seed)"):
        assert line in text, line
    rows = [line.split("  target-class")[0].strip() for line in text.splitlines() if "  target-class " in line]
    assert rows == ["SimCore", "nearest to X", "nearest to mean", "random", "open-set"]  # aligned columns
    assert len({line.index(" target-class") for line in text.splitlines() if "  target-class " in line}) == 1
    assert (out / "data" / "manifest.json").exists() and (out / "report" / "report.md").exists()
    if plots.available():
        assert {"rounds.png", "top_images.png", "accuracy.png", "composition_group.png"} <= set(
            p.name for p in (out / "report").iterdir())
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.count("up to date (skipped)") == 8


def test_demo_settings_train_on_every_target_image_each_epoch():
    """The demo's regime (RESULTS.md, issue 11) is 300 optimizer steps over 240 images: a batch
    size that does not divide X would drop the remainder every epoch (1 step an epoch at
    batch 128) and silently halve the steps. Its world needs relatives and target images."""
    from simcore import demo
    from simcore.synthetic import make_demo_data
    import inspect
    classes = inspect.signature(make_demo_data).parameters["classes"].default
    n = classes * demo.DEMO_DATA["train_per_class"]
    assert n % demo.DEMO["batch_size"] == 0
    assert demo.DEMO["epochs"] * n // demo.DEMO["batch_size"] == 300
    assert demo.DEMO_DATA["related"] == "squares" and demo.DEMO_DATA["share_target"] > 0
    budget = demo.DEMO["budget"] * demo.DEMO_DATA["openset_size"]
    assert budget == int(budget) and budget <= demo.DEMO_DATA["share_target"] * demo.DEMO_DATA["openset_size"]


def test_select_matches_api(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    X, U = torch.randn(30, 16, generator=g), torch.randn(3000, 16, generator=g)
    np.save(tmp_path / "x.npy", X.numpy())
    np.save(tmp_path / "u0.npy", U[:1000].numpy())
    np.save(tmp_path / "u1.npy", U[1000:].numpy())
    out = tmp_path / "sel"
    rc = main(["select", "--target-features", str(tmp_path / "x.npy"), "--openset-features",
               str(tmp_path / "u0.npy"), str(tmp_path / "u1.npy"), "--k", "8", "--budget", "2%",
               "--tau", "none", "--out", str(out), "--quiet"])
    assert rc == 0
    r = CoresetResult.load(out / "coreset.npz")
    ref = select_coreset(X, U, k=8, budget=0.02, tau=None)
    assert torch.equal(r.indices, ref.indices)
    summary = json.loads((out / "selection.json").read_text())
    assert summary["items"] == 60 and summary["stop_reason"] == "budget"


def test_bad_arguments_give_one_line_errors(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.randn(3, 4).astype(np.float32))
    assert main(["select", "--target-features", str(tmp_path / "x.npy"), "--openset-features",
                 str(tmp_path / "missing.npy"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.npy" in err
    np.save(tmp_path / "u.npy", np.random.randn(50, 4).astype(np.float32))
    assert main(["select", "--target-features", str(tmp_path / "x.npy"), "--openset-features",
                 str(tmp_path / "u.npy"), "--out", str(tmp_path / "o"), "--budget", "0"]) == 2
    assert "budget must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_help_lists_defaults():
    out = subprocess.run([sys.executable, "-m", "simcore", "select", "--help"], capture_output=True,
                         text=True, cwd="/").stdout
    assert "default: 0.95" in out and "--openset-features" in out


def test_methods_and_archs_are_listed_and_wired():
    from simcore.cli import ARCH_NAMES, METHOD_NAMES, build_parser
    from simcore.methods import METHODS
    assert sorted(METHOD_NAMES) == sorted(METHODS)
    for command in ("pretrain", "run"):
        out = subprocess.run([sys.executable, "-m", "simcore", command, "--help"], capture_output=True,
                             text=True, cwd="/").stdout
        assert "simsiam" in out and "moco" in out, command
        assert all(arch in out for arch in ARCH_NAMES), command
    args = build_parser().parse_args(["pretrain", "--data", "d", "--out", "o", "--method", "moco"])
    assert args.method == "moco"
    args = build_parser().parse_args(["run", "--target", "t", "--openset", "u", "--out", "o",
                                      "--method", "simsiam"])
    assert args.method == "simsiam"
    for argv in (["pretrain", "--data", "d", "--out", "o"], ["run", "--target", "t", "--openset", "u", "--out", "o"]):
        args = build_parser().parse_args(argv + ["--method", "moco", "--queue-size", "64"])
        assert args.queue_size == 64
        args = build_parser().parse_args(argv + ["--method", "dino", "--local-crops", "4", "--optimizer", "adamw",
                                                 "--weight-decay", "0.05"])
        assert (args.local_crops, args.optimizer, args.weight_decay) == (4, "adamw", 0.05)


def _two_classes(root, per_class):
    """A two-class ImageFolder of random 16 px images."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(2):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_multi_crop_and_mae_from_the_command_line(tmp_path, capsys):
    """--local-crops and --queue-size reach SwAV, --optimizer adamw reaches MAE's run, and
    `simcore run` keys the pretraining on a changed optimizer (not on the default one)."""
    from simcore.pipeline import Run, RunConfig
    _two_classes(tmp_path / "x", 16)
    common = ["--data", str(tmp_path / "x"), "--epochs", "1", "--batch-size", "8", "--image-size", "16",
              "--amp", "off", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main(["pretrain", "--out", str(tmp_path / "swav"), "--method", "swav", "--arch", "resnet18-w0.25",
                 "--local-crops", "3", "--queue-size", "8"] + common) == 0
    cfg = json.load(open(tmp_path / "swav" / "config.json"))
    assert cfg["method_options"] == {"queue_size": 8, "local_crops": 3}
    assert main(["pretrain", "--out", str(tmp_path / "mae"), "--method", "mae", "--arch", "vit_tiny",
                 "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05"] + common) == 0
    cfg = json.load(open(tmp_path / "mae" / "config.json"))
    assert (cfg["method"], cfg["optimizer"], cfg["weight_decay"]) == ("mae", "adamw", 0.05)
    capsys.readouterr()
    assert main(["pretrain", "--out", str(tmp_path / "bad"), "--method", "mae", "--arch", "resnet18"] + common) == 2
    assert "mae needs a ViT backbone" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "bad"), "--method", "byol", "--local-crops", "2"] + common) == 2
    assert "byol has no option local_crops" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    base = dict(target=str(tmp_path / "x"), openset=[str(tmp_path / "x")], out=str(tmp_path / "run"))

    def spec(**kw):
        r = Run(RunConfig(**base, **kw), progress=False)
        r.fingerprints = dict(target="x", openset=["u"])
        return r._spec("pretrain")["params"]
    assert "optimizer" not in spec() and "weight_decay" not in spec()  # the keys of runs from before
    assert spec(optimizer="adamw", weight_decay=0.05)["optimizer"] == "adamw"
    assert spec(weight_decay=0.05)["weight_decay"] == 0.05


def test_run_min_crop_reaches_both_trainings_and_keys_only_when_changed(tmp_path, monkeypatch):
    """`simcore run --min-crop A`: the SSL views' smallest crop, for the X-only pretraining and
    the retraining alike; keyed only when not the default, so runs from before keep their keys."""
    from simcore import pipeline
    from simcore.pipeline import Run, RunConfig
    _two_classes(tmp_path / "x", 8)
    seen = []
    monkeypatch.setattr(pipeline, "run", lambda cfg, **kw: seen.append(cfg))
    argv = ["run", "--target", str(tmp_path / "x"), "--openset", str(tmp_path / "x"), "--out", str(tmp_path / "o")]
    assert main(argv) == 0 and main(argv + ["--min-crop", "0.25"]) == 0
    assert [c.min_crop for c in seen] == [0.08, 0.25]
    base = dict(target=str(tmp_path / "x"), openset=[str(tmp_path / "x")], out=str(tmp_path / "run"), batch_size=8)

    def spec(stage, **kw):
        r = Run(RunConfig(**base, **kw), progress=False)
        r.fingerprints = dict(target="x", openset=["u"])
        return r._spec(stage)["params"]
    for stage in ("pretrain", "retrain", "baseline"):
        assert "min_crop" not in spec(stage) and spec(stage, min_crop=0.25)["min_crop"] == 0.25
    assert RunConfig(**base, min_crop=0.25).train_config([base["target"]], str(tmp_path / "t")).min_crop == 0.25
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match=r"min_crop must be in \(0, 1\]"):
            RunConfig(**base, min_crop=bad).check()


def test_pretrain_extract_eval_commands(tmp_path, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 6)):
        for c in range(2):
            d = tmp_path / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(60 + 120 * c + rng.integers(-30, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(tmp_path / "train"), "--out", str(run), "--arch", "resnet18-w0.25",
                 "--epochs", "1", "--batch-size", "8", "--image-size", "16", "--amp", "off", "--quiet"] + cache) == 0
    assert "pretrained 1 epoch(s)" in capsys.readouterr().out
    ckpt = str(run / "checkpoint.pt")
    assert main(["extract", "--checkpoint", ckpt, "--data", str(tmp_path / "test"),
                 "--out", str(tmp_path / "f.npy"), "--quiet"] + cache) == 0
    assert np.load(tmp_path / "f.npy").shape[0] == 12
    capsys.readouterr()
    assert main(["eval", "knn", "--checkpoint", ckpt, "--train", str(tmp_path / "train"),
                 "--test", str(tmp_path / "test")] + cache) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"knn_top1_k20", "knn_top1_k200"}
    assert main(["eval", "linear", "--checkpoint", ckpt, "--train", str(tmp_path / "train"),
                 "--test", str(tmp_path / "test"), "--epochs", "5"] + cache) == 0
    assert "linear_top1" in capsys.readouterr().out
    # one-line errors
    assert main(["pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")] + cache) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such dataset folder" in err
    assert main(["pretrain", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "r3"),
                 "--arch", "vgg16"] + cache) == 2
    assert "unknown architecture" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path / "train"), "--out", str(run)] + cache) == 2
    assert "--resume" in capsys.readouterr().err
    import torchvision.datasets as tvd

    def offline(**kw):
        raise OSError("network unreachable")
    tvd_dtd, tvd.DTD = tvd.DTD, offline
    try:
        assert main(["pretrain", "--data", "torchvision:dtd", "--out", str(tmp_path / "r4")] + cache) == 2
    finally:
        tvd.DTD = tvd_dtd
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "network unreachable" in err
