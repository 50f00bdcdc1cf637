"""Feature extraction: matches the backbone, writes the paths file, and resumes after an
interruption with identical features."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import simcore.extract as extract_mod
from simcore.data import load_images
from simcore.evaluate import features
from simcore.extract import extract, load_backbone
from simcore.train import TrainConfig, pretrain


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("x")
    rng = np.random.default_rng(1)
    for c in range(2):
        os.makedirs(root / "imgs" / f"c{c}")
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "imgs" / f"c{c}" / f"{i}.png")
    cfg = TrainConfig(data=[str(root / "imgs")], out=str(root / "run"), arch="resnet18-w0.25", epochs=1,
                      batch_size=8, warmup_epochs=0, image_size=16, amp="off", cache_dir=str(root / "cache"))
    pretrain(cfg, progress=False)
    return root


def test_extract_matches_the_backbone(run, tmp_path):
    out = extract(str(run / "run" / "checkpoint.pt"), str(run / "imgs"), str(tmp_path / "f.npy"),
                  dtype="float32", cache_dir=str(run / "cache"), progress=False)
    f = np.load(out)
    bb, cfg = load_backbone(str(run / "run" / "checkpoint.pt"), torch.device("cpu"))
    imgs = load_images(str(run / "imgs"), 16, cache_dir=str(run / "cache"))
    np.testing.assert_allclose(f, features(bb, imgs.images, 16).numpy(), rtol=1e-5, atol=1e-6)
    paths = open(tmp_path / "f.paths.txt").read().splitlines()
    assert paths == imgs.paths and f.shape == (40, bb.feature_dim)
    assert sorted(os.listdir(tmp_path)) == ["f.npy", "f.paths.txt"]


def test_extract_resumes_after_an_interruption(run, tmp_path, monkeypatch):
    ckpt, data = str(run / "run" / "checkpoint.pt"), str(run / "imgs")
    clean = np.load(extract(ckpt, data, str(tmp_path / "clean.npy"), chunk_rows=16, batch_size=8,
                            cache_dir=str(run / "cache"), progress=False))
    real = extract_mod._write_json_atomic
    calls = []

    def die_after_first_chunk(obj, path):
        real(obj, path)
        calls.append(obj["rows_done"])
        if obj["rows_done"] == 16:
            raise KeyboardInterrupt

    monkeypatch.setattr(extract_mod, "_write_json_atomic", die_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        extract(ckpt, data, str(tmp_path / "f.npy"), chunk_rows=16, batch_size=8,
                cache_dir=str(run / "cache"), progress=False)
    assert not os.path.exists(tmp_path / "f.npy") and os.path.exists(tmp_path / "f.npy.partial")
    calls.clear()
    out = extract(ckpt, data, str(tmp_path / "f.npy"), chunk_rows=16, batch_size=8,
                  cache_dir=str(run / "cache"), progress=False)
    assert calls == [32, 40]  # restarted after the last complete chunk
    assert np.array_equal(np.load(out), clean) and np.load(out).dtype == np.float16


def test_extract_bf16_is_close_and_a_partial_of_another_amp_is_not_resumed(run, tmp_path, monkeypatch):
    """amp="bf16": the same features to bf16's precision (cosine > 0.99 per row), and a
    float32 extraction's partial file is started over, not continued in bf16."""
    ckpt, data = str(run / "run" / "checkpoint.pt"), str(run / "imgs")
    kw = dict(dtype="float32", chunk_rows=16, batch_size=8, cache_dir=str(run / "cache"), progress=False)
    full = np.load(extract(ckpt, data, str(tmp_path / "fp32.npy"), **kw))
    half = np.load(extract(ckpt, data, str(tmp_path / "bf16.npy"), amp="bf16", **kw))
    assert half.shape == full.shape and not np.array_equal(half, full)
    cos = (half * full).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(full, axis=1)
    assert cos.min() > 0.99
    real = extract_mod._write_json_atomic

    def die_after_first_chunk(obj, path):
        real(obj, path)
        if obj["rows_done"] == 16:
            raise KeyboardInterrupt

    monkeypatch.setattr(extract_mod, "_write_json_atomic", die_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        extract(ckpt, data, str(tmp_path / "f.npy"), **kw)
    monkeypatch.setattr(extract_mod, "_write_json_atomic", die_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):  # and the other way round: a bf16 partial
        extract(ckpt, data, str(tmp_path / "h.npy"), amp="bf16", **kw)
    monkeypatch.setattr(extract_mod, "_write_json_atomic", real)
    np.testing.assert_array_equal(np.load(extract(ckpt, data, str(tmp_path / "h.npy"), **kw)), full)
    # the caller's encoder is left as it was (float32 extraction after a bf16 one is float32's)
    from simcore.encoders import load_encoder
    enc = load_encoder(ckpt)
    extract(enc, data, str(tmp_path / "i.npy"), amp="bf16", **kw)
    assert all(p.is_contiguous() for p in enc.module.parameters())
    np.testing.assert_array_equal(np.load(extract(enc, data, str(tmp_path / "j.npy"), **kw)), full)
    with pytest.raises(ValueError, match="amp must be off, bf16 or auto"):
        extract(ckpt, data, str(tmp_path / "g.npy"), amp="fp8", **kw)


def test_extract_errors(run, tmp_path):
    with pytest.raises(ValueError, match=".npy"):
        extract(str(run / "run" / "checkpoint.pt"), str(run / "imgs"), str(tmp_path / "f.bin"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        extract(str(tmp_path / "none.pt"), str(run / "imgs"), str(tmp_path / "f.npy"))


def test_extract_large_images(tmp_path):
    from simcore.extract import FeatureSource, features_of
    rng = np.random.default_rng(3)
    for c in range(2):
        os.makedirs(tmp_path / "imgs" / f"c{c}")
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (130, 110, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"c{c}" / f"{i}.jpg")
    cfg = TrainConfig(data=[str(tmp_path / "imgs")], out=str(tmp_path / "run"), arch="resnet18-w0.25", epochs=1,
                      batch_size=4, warmup_epochs=0, image_size=112, amp="off", workers=0)
    pretrain(cfg, progress=False)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    out = extract(ckpt, str(tmp_path / "imgs"), str(tmp_path / "f.npy"), dtype="float32", chunk_rows=5,
                  batch_size=2, progress=False, workers=2)
    f = np.load(out)
    bb, _ = load_backbone(ckpt, torch.device("cpu"))
    src = FeatureSource(str(tmp_path / "imgs"), 112, workers=0)
    assert f.shape == (12, bb.feature_dim) and src.labels().tolist() == [0] * 6 + [1] * 6
    np.testing.assert_allclose(f, features_of(bb, src).numpy(), rtol=1e-4, atol=1e-5)
