"""Pretraining: exact resume, DDP (2 gloo processes) equal to one process with the same
global batch, the run folder, and bad configurations."""
import csv
import datetime
import json
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

import simcore.train as train_mod
from simcore.checkpoint import load_checkpoint
from simcore.train import TrainConfig, pretrain


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in range(2):
        os.makedirs(root / f"c{c}")
        for i in range(24):
            img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # well-conditioned statistics
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return str(root)


def config(folder, out, **kw):
    base = dict(data=[folder], out=str(out), arch="resnet18-w0.25", epochs=3, batch_size=16,
                warmup_epochs=1, image_size=16, amp="off", cache_dir=str(out) + "-cache")
    base.update(kw)
    return TrainConfig(**base)


RESUMED = ([(m, "resnet18-w0.25", {}) for m in ("simclr", "byol", "simsiam", "moco", "swav", "dino")] +
           [("simclr", "vit_tiny", {}), ("moco", "efficientnet_b0-w0.25", {}),
            ("swav", "resnet18-w0.25", dict(queue_size=16, local_crops=2)),
            ("dino", "vit_tiny", dict(local_crops=2)), ("mae", "vit_tiny", dict(optimizer="adamw"))])


@pytest.mark.parametrize("method,arch,kw", RESUMED)
def test_resume_repeats_the_uninterrupted_run(folder, tmp_path, monkeypatch, method, arch, kw):
    """Everything a step depends on is in the checkpoint: weights, optimizer, and method
    state such as BYOL's target network, MoCo's key encoder and queue, SwAV's queue, DINO's
    teacher and center; MAE's masks are drawn from the step's generator."""
    options = dict(kw)
    run = dict(method=method, arch=arch, optimizer=options.pop("optimizer", "sgd"), method_options=options)
    full = pretrain(config(folder, tmp_path / "a", **run), progress=False)
    real_save = train_mod.save_checkpoint

    def save_then_die(path, **state):
        real_save(path, **state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # killed right after epoch 2's checkpoint

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config(folder, tmp_path / "b", **run), progress=False)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    rest = pretrain(config(folder, tmp_path / "b", **run), resume=True, progress=False)
    assert rest == full[2:]
    a = load_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))["model"]
    b = load_checkpoint(str(tmp_path / "b" / "checkpoint.pt"))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if method == "moco":  # 9 steps of 16 keys enqueued
        assert int(a["queue_ptr"]) == 9 * 16 and a["queue"].shape == (4096, 128)
    if method == "swav" and options:  # full after the first step: Sinkhorn used it from the second on
        assert int(a["queued"]) == 9 * 16 and a["queue"].shape == (2, 16, 128)
    with open(tmp_path / "b" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["loss"]) == pytest.approx(full[2], abs=1e-6)  # written with 6 decimals


def test_run_folder(folder, tmp_path):
    pretrain(config(folder, tmp_path / "r", epochs=1, method="byol"), progress=False)
    cfg = json.load(open(tmp_path / "r" / "config.json"))
    assert cfg["method"] == "byol" and cfg["world_size"] == 1
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and "optimizer" in state
    assert not [f for f in os.listdir(tmp_path / "r") if ".tmp" in f]  # nothing half-written


def test_refusals(folder, tmp_path):
    pretrain(config(folder, tmp_path / "x", epochs=1), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(config(folder, tmp_path / "x", epochs=1), progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        pretrain(config(folder, tmp_path / "x", epochs=1, base_lr=0.1), resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pretrain(config(folder, tmp_path / "y", epochs=1), resume=True, progress=False)
    with pytest.raises(ValueError, match="larger than the 48 training images"):
        pretrain(config(folder, tmp_path / "z", batch_size=64), progress=False)
    with pytest.raises(ValueError, match="image_size"):
        config(folder, tmp_path / "z", image_size=2048).check()
    with pytest.raises(ValueError, match="architecture"):
        config(folder, tmp_path / "z", arch="vgg").check()


def _ddp_worker(rank, world, port, folder, out, method, q, arch="resnet18-w0.25", options=None):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # see test_ddp_matches_one_process
    try:
        losses = pretrain(config(folder, out, epochs=1, method=method, arch=arch, method_options=options or {}),
                          progress=False)
        q.put((rank, losses))
    except Exception as e:  # noqa: BLE001
        q.put((rank, repr(e)))
    finally:
        dist.destroy_process_group()


def _run_ddp(folder, tmp_path, method, arch="resnet18-w0.25", options=None):
    """(single-process losses, [(rank, losses)], single weights, DDP weights)."""
    import torch.multiprocessing as mp
    torch.set_default_dtype(torch.float64)
    try:
        single = pretrain(config(folder, tmp_path / "one", epochs=1, method=method, arch=arch,
                                 method_options=options or {}), progress=False)
    finally:
        torch.set_default_dtype(torch.float32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, folder, str(tmp_path / "two"), method, q, arch, options),
                         daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = sorted(q.get(timeout=300) for _ in range(2))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for rank, losses in got:
        assert isinstance(losses, list), losses
    a = load_checkpoint(str(tmp_path / "one" / "checkpoint.pt"))["model"]
    b = load_checkpoint(str(tmp_path / "two" / "checkpoint.pt"))["model"]
    return single, got, a, b


@pytest.mark.parametrize("method,arch,options", [(m, "resnet18-w0.25", None) for m in ("simclr", "byol", "simsiam", "moco")] +
                         [("simclr", "vit_tiny", None), ("byol", "efficientnet_b0-w0.25", None),
                          ("swav", "resnet18-w0.25", dict(queue_size=16, local_crops=2)),
                          ("dino", "resnet18-w0.25", dict(local_crops=2)), ("mae", "vit_tiny", None)])
def test_ddp_matches_one_process(folder, tmp_path, method, arch, options):
    """Same global batch, augmentations, BatchNorm statistics and negatives: a 2-process run
    equals one process up to summation order. Both run in float64 (models, views, losses and
    BatchNorm statistics follow the default dtype): in float32 a last-bit difference grows to
    ~1e-4 in a weight within 3 steps on AVX2 oneDNN kernels (not on AVX-512), most likely
    through a discrete flip such as a ReLU at zero (not pinned to one op); in float64 the two
    runs differ by <= 1e-15 on both (measured), while a real difference (per-rank BatchNorm
    statistics, local negatives) moves the weights by > 1e-5. The tolerances sit between.
    MoCo's queue is in the compared state: every rank's keys are gathered before enqueueing.
    ViT-Ti (no BatchNorm in the backbone, only in the heads) and EfficientNet-B0 (stochastic
    depth off: it would draw per rank) too. SwAV (its codes from the gathered global batch,
    the queue in use from the second step), DINO (its center from the gathered teacher
    outputs) and MAE (masks drawn for the global batch and sliced like the views)."""
    single, got, a, b = _run_ddp(folder, tmp_path, method, arch, options)
    assert got[0][1] == got[1][1]  # every rank reports the same
    np.testing.assert_allclose(got[0][1], single, rtol=1e-12)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype != torch.float32, k  # the float64 run really ran in float64
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(2)
    for c in range(2):
        os.makedirs(root / f"c{c}")
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (140, 120, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.jpg")
    return str(root)


def _killed_after_epoch_1_then_resumed(monkeypatch, cfg):
    """The run of cfg killed right after epoch 1's checkpoint, then resumed: the resumed losses."""
    real_save = train_mod.save_checkpoint

    def save_then_die(path, **state):
        real_save(path, **state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, progress=False)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    return pretrain(cfg, resume=True, progress=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_large_images_go_through_workers_and_resume_exactly(large_folder, tmp_path, monkeypatch, workers):
    kw = dict(image_size=112, batch_size=8, epochs=2, workers=workers)
    full = pretrain(config(large_folder, tmp_path / "a", **kw), progress=False)
    assert len(full) == 2 and all(np.isfinite(full))
    assert not os.path.exists(str(tmp_path / "a") + "-cache")  # no tensor cache for large images
    assert _killed_after_epoch_1_then_resumed(monkeypatch, config(large_folder, tmp_path / "b", **kw)) == full[1:]


def test_tensorboard_logging(folder, tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(builtins, "__import__", no_tensorboard)
        with pytest.raises(ValueError, match="pip install tensorboard"):
            pretrain(config(folder, tmp_path / "nt", epochs=1, tensorboard=True), progress=False)
        assert not (tmp_path / "nt").exists()  # refused before any work
    pytest.importorskip("tensorboard")
    pretrain(config(folder, tmp_path / "tb", epochs=1, tensorboard=True), progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    ev.Reload()
    assert {"pretrain/loss", "pretrain/lr", "pretrain/images_per_s"} <= set(ev.Tags()["scalars"])


def test_resume_names_what_changed_and_ignores_speed_switches(folder, tmp_path):
    pretrain(config(folder, tmp_path / "r", epochs=2), progress=False)
    with pytest.raises(ValueError, match=r"base_lr: 0.06 then, 0.1 now"):
        pretrain(config(folder, tmp_path / "r", epochs=2, base_lr=0.1), resume=True, progress=False)
    # speed-only switches and an equivalent relative path do not block a resume
    rel = os.path.relpath(folder)
    assert pretrain(config(rel, tmp_path / "r", epochs=2, channels_last=False), resume=True,
                    progress=False) == []


def test_method_options_are_checked_up_front(folder, tmp_path):
    with pytest.raises(ValueError, match="byol has no option temperature"):
        config(folder, tmp_path / "m", method="byol", method_options={"temperature": 0.2}).check()
    with pytest.raises(ValueError, match="unknown method"):
        config(folder, tmp_path / "m", method="ibot").check()
    with pytest.raises(ValueError, match="mae needs a ViT"):
        config(folder, tmp_path / "m", method="mae").check()
    with pytest.raises(ValueError, match="local_crops must be an int >= 0"):
        config(folder, tmp_path / "m", method="dino", method_options={"local_crops": -2}).check()
    with pytest.raises(ValueError, match="optimizer must be sgd, lars or adamw"):
        config(folder, tmp_path / "m", optimizer="adam").check()
    with pytest.raises(ValueError, match="min-crop"):  # from the method, before any work
        pretrain(config(folder, tmp_path / "m", method="swav", min_crop=0.5), progress=False)
    assert not (tmp_path / "m").exists()
    # multi-crop's bounds in check(): `simcore run` calls it before its first stage
    with pytest.raises(ValueError, match=r"swav's multi-crop needs --min-crop \(0.25\) < the global/local crop "
                                         r"split \(0.14\) < 1: lower --min-crop$"):
        config(folder, tmp_path / "m", method="swav", min_crop=0.25).check()
    with pytest.raises(ValueError, match=r"split \(0.2\) < 1: lower --min-crop or choose crop_split"):
        config(folder, tmp_path / "m", method="dino", min_crop=0.25, method_options={"crop_split": 0.2}).check()
    config(folder, tmp_path / "m", method="swav", min_crop=0.25, method_options={"crop_split": 0.3}).check()
    for bad in ("0.3", None, True, float("nan")):  # a ValueError that says so, not a TypeError
        with pytest.raises(ValueError, match="crop_split must be a number"):
            config(folder, tmp_path / "m", method="dino", method_options={"crop_split": bad}).check()


def test_skip_bad_large_images_catches_truncated_files(large_folder, tmp_path):
    import shutil
    root = tmp_path / "imgs"
    shutil.copytree(large_folder, root)
    good = (root / "c0" / "0.jpg").read_bytes()
    (root / "c0" / "broken.jpg").write_bytes(good[: len(good) // 2])  # header fine, data cut
    losses = pretrain(config(str(root), tmp_path / "run", image_size=112, batch_size=8, epochs=1,
                             workers=0, skip_bad_images=True), progress=False)
    assert len(losses) == 1


def test_steps_fix_the_optimizer_steps_whatever_the_data_size(folder, tmp_path, monkeypatch):
    """steps=N runs exactly N optimizer steps (the last epoch cut short), with the schedule
    over N steps and warmup_steps overriding warmup_epochs: how `simcore run` gives X alone
    and X + coreset the same training."""
    seen = []
    real = train_mod.lr_at
    monkeypatch.setattr(train_mod, "lr_at", lambda step, total, peak, warmup: seen.append((step, total, warmup))
                        or real(step, total, peak, warmup))
    losses = pretrain(config(folder, tmp_path / "a", steps=7, warmup_steps=2), progress=False)
    assert [s for s, _, _ in seen] == list(range(7)) and {(t, w) for _, t, w in seen} == {(7, 2)}
    assert len(losses) == 3  # 48 images // 16 = 3 steps per epoch: 3 + 3 + 1
    with open(tmp_path / "a" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for bad, match in ((dict(steps=0), "steps must be"), (dict(steps=4, warmup_steps=5), "warmup_steps"),
                       (dict(warmup_steps=-1), "warmup_steps")):
        with pytest.raises(ValueError, match=match):
            config(folder, tmp_path / "b", **bad).check()


def test_moco_warns_when_its_queue_outgrows_the_data(folder, tmp_path, capsys):
    """48 images and 4096 queued keys: every image's own keys would be its negatives."""
    pretrain(config(folder, tmp_path / "a", method="moco", epochs=1, warmup_epochs=0), progress=False)
    assert "MoCo's queue holds 4096 keys and there are 48 training images" in capsys.readouterr().out
    pretrain(config(folder, tmp_path / "b", method="moco", epochs=1, warmup_epochs=0,
                    method_options=dict(queue_size=32)), progress=False)
    assert "queue holds" not in capsys.readouterr().out


@pytest.mark.parametrize("method,arch,kw", [("dino", "resnet18-w0.25", dict(local_crops=2)),
                                            ("mae", "vit_tiny", {})])
def test_large_images_take_every_view_and_the_noise(large_folder, tmp_path, monkeypatch, method, arch, kw):
    """Above 96 px the workers draw each view of a multi-crop method (global at the training
    size, local at 3/7 of it) and the trainer MAE's masking noise; resume stays exact."""
    seen = []
    real = train_mod.build

    def spy(cfg, device):
        m = real(cfg, device)
        inner = m.forward
        m.forward = lambda *inputs: seen.append([tuple(x.shape) for x in inputs]) or inner(*inputs)
        return m

    monkeypatch.setattr(train_mod, "build", spy)
    run = dict(image_size=112, batch_size=8, epochs=2, workers=0, method=method, arch=arch, method_options=kw)
    full = pretrain(config(large_folder, tmp_path / "a", **run), progress=False)
    if method == "dino":
        assert seen[0] == [(8, 3, 112, 112)] * 2 + [(8, 3, 48, 48)] * 2
    else:
        assert seen[0] == [(8, 3, 112, 112), (8, 196)]  # 8 px patches at 112 px: 14 x 14
    assert _killed_after_epoch_1_then_resumed(monkeypatch, config(large_folder, tmp_path / "b", **run)) == full[1:]


def test_adamw_skips_weight_decay_on_biases_and_norms(folder, tmp_path):
    pretrain(config(folder, tmp_path / "a", method="mae", arch="vit_tiny", optimizer="adamw", lr=1e-3,
                    weight_decay=0.05, epochs=1), progress=False)
    state = load_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    shapes = [p.shape for p in train_mod.build(config(folder, tmp_path / "b", method="mae", arch="vit_tiny"),
                                                torch.device("cpu")).parameters() if p.requires_grad]
    assert len(groups[1]["params"]) == sum(len(s) <= 1 for s in shapes) > 0
    assert len(groups[0]["params"]) == sum(len(s) > 1 for s in shapes)
