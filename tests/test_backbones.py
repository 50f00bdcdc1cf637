"""Every backbone (issue 12): builds, feature shapes at 32 and 224 px, torchvision's
parameter names (random-init torchvision state dicts load strictly and give the same
features), ViT patches and position-embedding resizing, every method on every kind of
backbone, and the command line: pretrain + extract + eval for a ViT and a ResNeXt, a whole
`simcore run` on a ViT, and one-line errors for bad names."""
import json
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from simcore.cli import main
from simcore.models import ARCH_NAMES, build_backbone, parse_arch, vit_patch

DIMS = {"resnet18": 512, "resnet50": 2048, "resnet101": 2048, "resnext50_32x4d": 2048, "efficientnet_b0": 1280,
        "vit_tiny": 192, "vit_small": 384, "vit_base": 768}


def test_the_names():
    assert sorted(ARCH_NAMES) == sorted(DIMS)
    assert parse_arch("resnext50_32x4d-w0.5") == ("resnext50_32x4d", 0.5)
    assert parse_arch("efficientnet_b0-w0.25") == ("efficientnet_b0", 0.25)
    assert parse_arch("vit_small", 32) == ("vit_small", 1.0)
    for bad, message in [("vit_tiny-w0.5", "ViTs take no width suffix"), ("resnext50_32x4d-w0.125", ">= 0.25"),
                         ("resnet101-w5", "width must be in"), ("vit_huge", "unknown architecture"),
                         ("resnext50", "unknown architecture"), ("vit_tiny-", "unknown architecture")]:
        with pytest.raises(ValueError, match=message) as e:
            parse_arch(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="multiple of its 4 px patch"):
        parse_arch("vit_tiny", 50)
    with pytest.raises(ValueError) as e:
        parse_arch("alexnet")
    assert all(name in str(e.value) for name in ARCH_NAMES)  # the message lists the choices


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("arch", list(DIMS))
def test_every_arch_gives_features(arch, size):
    torch.manual_seed(0)
    m = build_backbone(arch, small_images=size <= 96, image_size=size).eval()
    assert m.feature_dim == DIMS[arch]
    with torch.no_grad():
        out = m(torch.randn(2, 3, size, size))
    assert out.shape == (2, DIMS[arch]) and torch.isfinite(out).all()
    assert out.std(0).max() > 0  # the two images give different features


def test_widths_and_small_image_stems():
    x = torch.randn(2, 3, 32, 32)
    for arch, dim in [("resnext50_32x4d-w0.25", 512), ("resnet101-w0.25", 512), ("efficientnet_b0-w0.5", 640)]:
        m = build_backbone(arch, small_images=True)
        assert m.feature_dim == dim and m(x).shape == (2, dim), arch
    rx = build_backbone("resnext50_32x4d-w0.25", True)
    assert rx.layer1[0].conv2.groups == 32 and rx.conv1.stride == (1, 1)
    eff = build_backbone("efficientnet_b0", True)
    assert eff.features(x).shape[-2:] == (4, 4)  # as the ResNets' CIFAR stem: 32 px -> 4x4
    assert build_backbone("efficientnet_b0", False).features(torch.randn(1, 3, 224, 224)).shape[-2:] == (7, 7)
    assert [vit_patch(s) for s in (16, 32, 48, 64, 96, 128, 224)] == [4, 4, 4, 8, 8, 16, 16]
    for size, grid in [(32, 8), (64, 8), (96, 12), (224, 14)]:
        vit = build_backbone("vit_tiny", size <= 96, size)
        assert vit.encoder.pos_embedding.shape[1] == 1 + grid * grid, size


def _vit(heads, hidden):
    return lambda: VisionTransformer(224, 16, 12, heads, hidden, 4 * hidden)


TORCHVISION = [("resnet18", torchvision.models.resnet18, "fc."), ("resnet50", torchvision.models.resnet50, "fc."),
               ("resnet101", torchvision.models.resnet101, "fc."),
               ("resnext50_32x4d", torchvision.models.resnext50_32x4d, "fc."),
               ("efficientnet_b0", torchvision.models.efficientnet_b0, "classifier."),
               ("vit_base", torchvision.models.vit_b_16, "heads."),
               ("vit_tiny", _vit(3, 192), "heads."), ("vit_small", _vit(6, 384), "heads.")]


@pytest.mark.parametrize("arch,make,head", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_torchvision_state_dicts_load(arch, make, head):
    """A torchvision model's state dict (random init: no downloads here) loads strictly into
    our width-1 ImageNet-stem backbone, which then computes torchvision's penultimate features."""
    torch.manual_seed(0)
    tv = make().eval()
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith(head)}
    ours = build_backbone(arch, small_images=False, image_size=224).eval()
    assert ours.state_dict().keys() == state.keys()
    ours.load_state_dict(state, strict=True)
    setattr(tv, head[:-1], torch.nn.Identity())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-4)


def test_vit_at_another_size_resizes_positions_as_torchvision():
    """A ViT built for 224 px run at 128 px equals a 128 px ViT holding the weights
    torchvision's interpolate_embeddings resizes; a non-multiple of the patch is refused."""
    torch.manual_seed(0)
    big = build_backbone("vit_tiny", False, 224).eval()
    small = build_backbone("vit_tiny", False, 128).eval()
    assert big.patch_size == small.patch_size == 16
    small.load_state_dict(interpolate_embeddings(128, 16, big.state_dict()))
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x))
        with pytest.raises(ValueError, match="multiples of 16"):
            big(torch.randn(1, 3, 120, 120))


@pytest.mark.parametrize("arch", ["vit_tiny", "efficientnet_b0-w0.25", "resnext50_32x4d-w0.25"])
def test_every_method_trains_every_kind_of_backbone(arch):
    """The heads follow feature_dim; one SGD step runs and changes the backbone (on each
    method's own views: multi-crop for SwAV and DINO, one view and its masking noise for
    MAE, which takes ViTs only)."""
    from simcore.methods import METHODS, VIT_ONLY, build_method, method_views
    for name in METHODS:
        if name in VIT_ONLY and not arch.startswith("vit"):
            with pytest.raises(ValueError, match="ViT backbone"):
                build_method(name, build_backbone(arch, True, 16))
            continue
        torch.manual_seed(0)
        method = build_method(name, build_backbone(arch, True, 16), **({"queue_size": 8} if name == "moco" else {}))
        before = [p.detach().clone() for p in method.backbone.parameters()]
        inputs = [torch.randn(4, 3, a.size, a.size) for a in method_views(method, 16, 0.08)]
        if hasattr(method, "noise"):
            inputs.append(method.noise(4, torch.Generator().manual_seed(0), "cpu"))
        loss = method(*inputs)
        assert torch.isfinite(loss), (arch, name)
        loss.backward()
        torch.optim.SGD(method.parameters(), lr=0.1).step()
        method.after_step(0.5)
        assert any(not torch.equal(a, b) for a, b in zip(before, method.backbone.parameters())), (arch, name)


def _images(root, classes, per_class, size, seed):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(50 + 100 * c + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")


@pytest.mark.parametrize("arch", ["vit_tiny", "resnext50_32x4d"])
def test_pretrain_extract_eval_through_the_cli(arch, tmp_path, capsys):
    """Two optimizer steps at 32 px, then features from the checkpoint (and through
    simcore.encoders, at the training size and, for the ViT, at another multiple of its
    patch) and a kNN evaluation."""
    _images(tmp_path / "train", 2, 8, 32, 0)
    _images(tmp_path / "test", 2, 3, 32, 1)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(tmp_path / "train"), "--out", str(run), "--arch", arch, "--epochs", "1",
                 "--batch-size", "8", "--image-size", "32", "--warmup-epochs", "0", "--quiet"] + cache) == 0
    assert "pretrained 1 epoch(s)" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["total_steps"] == 2
    ckpt = str(run / "checkpoint.pt")
    assert main(["extract", "--checkpoint", ckpt, "--data", str(tmp_path / "test"), "--out", str(tmp_path / "f.npy"),
                 "--dtype", "float32", "--quiet"] + cache) == 0
    f = np.load(tmp_path / "f.npy")
    assert f.shape == (6, DIMS[arch]) and np.isfinite(f).all()
    from simcore.encoders import load_encoder
    from simcore.extract import load_backbone
    backbone, cfg = load_backbone(ckpt, torch.device("cpu"))
    assert cfg["arch"] == arch and backbone.feature_dim == DIMS[arch]
    enc = load_encoder(ckpt)
    assert (enc.size, enc.dim) == (32, DIMS[arch])
    if arch.startswith("vit"):
        assert load_encoder(ckpt, size=48).dim == DIMS[arch]  # 12x12 patches of 4 px: positions resized
        with pytest.raises(ValueError, match="multiples of 4"):
            load_encoder(ckpt, size=50)
    capsys.readouterr()
    assert main(["eval", "knn", "--checkpoint", ckpt, "--train", str(tmp_path / "train"),
                 "--test", str(tmp_path / "test")] + cache) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= result["knn_top1_k20"] <= 100


def test_run_on_a_vit(tmp_path, capsys):
    """`simcore run` end to end on ViT-Ti at 16 px (4 px patches): every stage."""
    _images(tmp_path / "train", 2, 8, 16, 0)
    _images(tmp_path / "test", 2, 3, 16, 1)
    _images(tmp_path / "openset", 3, 6, 16, 2)
    out = tmp_path / "run"
    assert main(["run", "--target", str(tmp_path / "train"), "--openset", str(tmp_path / "openset"),
                 "--test", str(tmp_path / "test"), "--out", str(out), "--arch", "vit_tiny", "--image-size", "16",
                 "--epochs", "1", "--batch-size", "8", "--warmup-epochs", "0", "--k", "2", "--budget", "4",
                 "--tau", "none", "--linear-epochs", "2", "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(rec["status"] == "done" for rec in manifest["stages"].values())
    assert manifest["stages"]["select"]["items"] == 4
    assert set(json.loads((out / "eval" / "eval.json").read_text())) == {"X", "X + SimCore"}


def test_bad_arch_is_a_one_line_error_listing_the_choices(tmp_path, capsys):
    _images(tmp_path / "train", 2, 4, 16, 0)
    base = ["--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache")]
    for argv in (["pretrain", "--data", str(tmp_path / "train"), "--arch", "vit_huge"],
                 ["run", "--target", str(tmp_path / "train"), "--openset", str(tmp_path / "train"),
                  "--arch", "vit_huge"]):
        assert main(argv + base) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unknown architecture 'vit_huge'" in err, err
        assert all(name in err for name in ARCH_NAMES), err
    assert main(["pretrain", "--data", str(tmp_path / "train"), "--arch", "vit_tiny", "--image-size", "18"] + base) == 2
    assert "multiple of its 4 px patch" in capsys.readouterr().err
    assert main(["run", "--target", str(tmp_path / "train"), "--openset", str(tmp_path / "train"), "--arch",
                 "vit_tiny", "--image-size", "16", "--retrieval-size", "18"] + base) == 2
    assert "multiples of its 4 px patch" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_the_cli_lists_every_arch():  # (test_cli.py checks --help shows them)
    from simcore.cli import ARCH_NAMES as listed
    assert listed == ARCH_NAMES
