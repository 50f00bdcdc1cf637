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
