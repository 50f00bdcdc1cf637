"""Backbones: torchvision-compatible at width 1, CIFAR stem, width scaling, bad names."""
import pytest
import torch
import torchvision

from simcore.models import build_backbone, parse_arch


def test_parse_arch():
    assert parse_arch("resnet18") == ("resnet18", 1.0)
    assert parse_arch("resnet18-w0.25") == ("resnet18", 0.25)
    assert parse_arch("resnet50-w2") == ("resnet50", 2.0)
    for bad in ["resnet34", "resnet18-w", "resnet18-w0", "resnet18-w9", "vit", None, "RESNET18"]:
        with pytest.raises(ValueError, match="architecture"):
            parse_arch(bad)


@pytest.mark.parametrize("arch,tv", [("resnet18", torchvision.models.resnet18),
                                     ("resnet50", torchvision.models.resnet50)])
def test_width_one_is_torchvision(arch, tv):
    ours = build_backbone(arch, small_images=False).state_dict()
    ref = {k: v for k, v in tv().state_dict().items() if not k.startswith("fc.")}
    assert ours.keys() == ref.keys()
    assert all(ours[k].shape == ref[k].shape for k in ref)
    model = build_backbone(arch, small_images=False).eval()
    model.load_state_dict(ref)  # torchvision weights load as they are
    x = torch.randn(2, 3, 64, 64)
    tvm = tv().eval()
    tvm.load_state_dict({**ref, **{k: v for k, v in tvm.state_dict().items() if k.startswith("fc.")}})
    tvm.fc = torch.nn.Identity()
    torch.testing.assert_close(model(x), tvm(x))


@pytest.mark.parametrize("arch,dim", [("resnet18", 512), ("resnet50", 2048), ("resnet18-w0.25", 128),
                                      ("resnet18-w0.5", 256)])
def test_small_image_stem_and_widths(arch, dim):
    m = build_backbone(arch, small_images=True)
    assert m.feature_dim == dim
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, torch.nn.Identity)
    out = m(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, dim) and torch.isfinite(out).all()


def test_quarter_width_is_small():
    full = sum(p.numel() for p in build_backbone("resnet18", True).parameters())
    quarter = sum(p.numel() for p in build_backbone("resnet18-w0.25", True).parameters())
    assert quarter < full / 12


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    m = build_backbone("resnet18-w0.25", True).eval()
    x = torch.randn(4, 3, 32, 32)
    a = m(x)
    b = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
