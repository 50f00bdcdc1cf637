"""The demo's benchmark scripts, end to end at a few optimizer steps (their real runs take
hours; see benchmarks/RESULTS.md, issue 11)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_script(name, args, tmp_path):
    # not from the repository root: the source folder simcore_ext/ would shadow the installed,
    # compiled package; no empty PYTHONPATH entry (it would mean the working directory)
    paths = [os.path.join(ROOT, "benchmarks")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), *args], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)


def test_demo_regime_trains_and_scores_at_the_image_size_asked(tmp_path):
    work, out = tmp_path / "work", tmp_path / "r"
    r = _run_script("demo_regime.py", ["--steps", "2", "--seeds", "0", "--extra", "8", "--image-size", "16",
                                       "--work-dir", str(work), "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(str(out) + ".json"))
    assert res["args"]["image_size"] == 16
    rows = res["rows"]["2"]
    assert set(rows) == {"X", "X + oracle (8)"}
    for per_seed in rows.values():
        assert 0 <= per_seed["0"]["linear"] <= 100 and 0 <= per_seed["0"]["knn20"] <= 100
    assert "16 px" in open(str(out) + ".md").read()
    trained = sorted(p for p in os.listdir(work) if p.startswith("w0_"))
    assert trained == ["w0_steps2_extra0_lr0.3_minc0.08_img16_seed0", "w0_steps2_extra8_lr0.3_minc0.08_img16_seed0"]
    with open(work / trained[1] / "extra.txt") as f:
        extra = f.read().split()
    with open(work / "world0" / "openset_classes.tsv") as f:
        target = {line.split("\t")[0] for line in f if line.rstrip("\n").split("\t")[-2:-1] == ["target-class"]}
    assert len(extra) == 8 and target and {os.path.basename(os.path.dirname(p)) for p in extra} <= target
    # a rerun reuses the trained encoders and scores them the same
    again = _run_script("demo_regime.py", ["--steps", "2", "--seeds", "0", "--extra", "8", "--image-size", "16",
                                           "--work-dir", str(work), "--out", str(out)], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _scores(json.load(open(str(out) + ".json"))["rows"]["2"]) == _scores(rows)
    assert all(per_seed["0"]["trained"] for per_seed in rows.values())
    assert "2 of 2 encoders were trained by an earlier run" in open(str(out) + ".md").read()


def _scores(rows):
    return {name: {k: v for k, v in per_seed["0"].items() if k not in ("seconds", "trained")} for name, per_seed in rows.items()}


def test_run_demo_options_override_the_demo_settings(tmp_path, monkeypatch):
    """run_demo's run_options (what demo_seeds.py --min-crop, --lr pass) reach the demo's
    RunConfig; the rest stays the demo's."""
    import simcore.pipeline
    import simcore.synthetic
    from simcore.demo import DEMO, run_demo
    seen = {}

    class Stop(Exception):
        pass

    def config(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(simcore.synthetic, "make_demo_data", lambda *a, **kw: {})
    monkeypatch.setattr(simcore.pipeline, "RunConfig", config)
    try:
        run_demo(out=str(tmp_path / "d"), progress=False, run_options=dict(min_crop=0.25))
    except Stop:
        pass
    assert seen["min_crop"] == 0.25
    expected = dict(DEMO, min_crop=0.25)
    assert {k: seen[k] for k in expected} == expected


def test_demo_regime_passes_optimizer_weight_decay_and_temperature(tmp_path):
    """The training options reach the trainer (its config.json) and name their own folders,
    while the defaults keep the older folder names (test above)."""
    work, out = tmp_path / "work", tmp_path / "r"
    r = _run_script("demo_regime.py", ["--steps", "2", "--seeds", "0", "--extra", "0", "--image-size", "16",
                                       "--optimizer", "adamw", "--lr", "0.002", "--weight-decay", "0.05",
                                       "--temperature", "0.2", "--work-dir", str(work), "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    trained = sorted(p for p in os.listdir(work) if p.startswith("w0_"))
    assert trained == ["w0_steps2_extra0_lr0.002_minc0.08_img16_adamw_wd0.05_t0.2_seed0"]
    cfg = json.load(open(work / trained[0] / "config.json"))
    assert (cfg["optimizer"], cfg["weight_decay"], cfg["lr"]) == ("adamw", 0.05, 0.002)
    assert cfg["method_options"] == {"temperature": 0.2}
    assert "adamw lr 0.002 weight decay 0.05, temperature 0.2" in open(str(out) + ".md").read()


def test_demo_seeds_passes_its_training_options_to_the_demo(tmp_path, monkeypatch):
    """demo_seeds.py --optimizer/--weight-decay/--lr/--min-crop become run_demo's run_options,
    each setting in its own work folder; unset ones stay the demo's."""
    mod = _load_benchmark("demo_seeds", monkeypatch)
    seen = []

    class Stop(Exception):
        pass

    def run_demo(out, seed, progress, data_options, run_options):
        seen.append((out, run_options))
        raise Stop

    monkeypatch.setattr(mod, "run_demo", run_demo)
    for argv, expected in (([], {}),
                           (["--optimizer", "adamw", "--weight-decay", "0.05", "--lr", "0.002", "--min-crop", "0.25"],
                            dict(optimizer="adamw", weight_decay=0.05, lr=0.002, min_crop=0.25))):
        monkeypatch.setattr(sys, "argv", ["demo_seeds.py", "--seeds", "4", "--work-dir", str(tmp_path), *argv])
        try:
            mod.main()
        except Stop:
            pass
        out, options = seen[-1]
        assert options == expected
    assert [os.path.basename(o) for o, _ in seen] == ["seed4", "seed4_lr0.002_min_crop0.25_optimizeradamw_weight_decay0.05"]


def _load_benchmark(name, monkeypatch):
    import importlib.util
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_openssl_table_prints_the_held_out_score_for_choosing_settings(monkeypatch):
    """The regime is chosen on a split held out of dogs/train (issue 11), so the table shows
    that score per row; results written before it existed print without the line."""
    import argparse
    mod = _load_benchmark("openssl_table", monkeypatch)
    shares = {"precision": 10.0, "target-class": 4.0, "dog": 6.0, "animal": 40.0, "other": 50.0}
    coresets = {"0": dict(precision={"raw-pixels-1%": shares, "oracle-5%": dict(shares, precision=100.0),
                                     **{f"simcore-{label}": shares for label in mod.LABELS}},
                          info={f"simcore-{label}": {"items": 503} for label in mod.LABELS})}
    args = argparse.Namespace(arch="resnet18-w0.25", steps=3500, batch_size=256, lr=0.3, k=100,
                              retrieval_encoder=None, retrieval_size=None, whiten=0)
    row = dict(seed=0, knn20=30.0, knn200=31.0, linear=32.0, images=1800)
    results = {"X/0/3500": dict(row, row="X", val_linear=40.5),
               "X+OS_oracle (5%)/0/3500": dict(row, row="X+OS_oracle (5%)", images=4315, val_linear=44.25)}
    md = mod.table(results, coresets, args, 6.4)
    assert "| X+OS_oracle (5%) | 4,315 | 32.0 ± 0.0 |" in md
    assert "linear top-1 X 40.5, X+OS_oracle (5%) 44.2." in md
    older = {k: {n: v for n, v in r.items() if n != "val_linear"} for k, r in results.items()}
    md = mod.table(older, coresets, args, 6.4)
    assert "Held out" not in md and "No held-out score for X, X+OS_oracle (5%): scored before" in md


def test_openssl_table_rows_record_the_held_out_score(tmp_path, monkeypatch):
    """run_row scores every encoder on the split held out of dogs/train as well (the training
    replaced by a fixed random backbone: the scoring is what is tested)."""
    import argparse
    import torch
    from simcore.evaluate import linear_probe
    mod = _load_benchmark("openssl_table", monkeypatch)
    g = torch.Generator().manual_seed(0)
    train_y, test_y = torch.arange(60) % 3, torch.arange(30) % 3
    ftr, fte = torch.randn(60, 8, generator=g) + train_y[:, None], torch.randn(30, 8, generator=g) + test_y[:, None]
    trained = []
    monkeypatch.setattr(mod, "pretrain", lambda cfg, resume, progress: trained.append(cfg))
    monkeypatch.setattr(mod, "load_backbone", lambda path, device: ("backbone", None))
    monkeypatch.setattr(mod, "features", lambda backbone, images, size: {"train": ftr, "test": fte}[images])
    monkeypatch.setattr(mod, "load_images", lambda d, size, cache_dir=None: [0] * 60)
    args = argparse.Namespace(arch="resnet18-w0.25", steps=10, batch_size=32, lr=0.3, cache_dir=None,
                              retrieval_encoder=None, retrieval_size=None, whiten=0)
    train = argparse.Namespace(images="train", labels=train_y)
    test = argparse.Namespace(images="test", labels=test_y)
    r = mod.run_row(args, 0, "X", ["X"], str(tmp_path), "dogs/train", "openset", None, train, test)
    assert len(trained) == 1 and trained[0].data == ["dogs/train"] and trained[0].steps == 10
    expected = linear_probe(ftr, train_y, fte, test_y, seed=0, val_fraction=mod.VAL_FRACTION)["val_top1"]
    assert r["val_linear"] == expected and 0 <= r["val_linear"] <= 100
    assert r["linear"] == linear_probe(ftr, train_y, fte, test_y, seed=0)["top1"] and r["images"] == 60
