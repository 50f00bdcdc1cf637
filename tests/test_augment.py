"""The batched SimCLR augmentation: identity when every knob is off, flips, grayscale,
crops, jitter ranges, reproducibility, bad input."""
import pytest
import torch

from simcore.augment import Augment, augment, normalize

OFF = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)


def images(n=6, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def test_identity_when_everything_is_off():
    x = images()
    cfg = Augment(size=32, **OFF)
    torch.testing.assert_close(augment(x, cfg), normalize(x, cfg), rtol=0, atol=1e-5)


def test_flip():
    x = images()
    cfg = Augment(size=32, **{**OFF, "flip_p": 1.0})
    torch.testing.assert_close(augment(x, cfg), normalize(x.flip(-1), cfg), rtol=0, atol=1e-5)


def test_grayscale_makes_channels_equal():
    cfg = Augment(size=32, **{**OFF, "gray_p": 1.0}, mean=(0, 0, 0), std=(1, 1, 1))
    y = augment(images(), cfg)
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 1], y[:, 2])


def test_crop_zooms_into_a_part():
    # left half black, right half white: a crop of width <= 1/2 mostly sees one side
    x = torch.zeros(200, 3, 32, 32, dtype=torch.uint8)
    x[..., 16:] = 255
    cfg = Augment(size=16, **{**OFF, "scale": (0.05, 0.1)}, mean=(0, 0, 0), std=(1, 1, 1))
    y = augment(x, cfg, torch.Generator().manual_seed(1))
    means = y.mean(dim=(1, 2, 3))
    assert ((means < 0.2) | (means > 0.8)).float().mean() > 0.5  # whole-image crops give 0.5
    assert y.shape == (200, 3, 16, 16) and y.dtype == torch.float32


def test_jitter_stays_in_range_and_changes_colours():
    x = images(64)
    base = Augment(size=32, **OFF, mean=(0, 0, 0), std=(1, 1, 1))
    jit = Augment(size=32, **{**OFF, "jitter_p": 1.0}, mean=(0, 0, 0), std=(1, 1, 1))
    y0, y1 = augment(x, base), augment(x, jit, torch.Generator().manual_seed(2))
    assert y1.min() >= 0 and y1.max() <= 1
    assert (y1 - y0).abs().mean() > 0.02


def test_hue_rotation_keeps_gray_pixels():
    x = torch.full((4, 3, 8, 8), 128, dtype=torch.uint8)
    cfg = Augment(size=8, **{**OFF, "jitter_p": 1.0}, brightness=0, contrast=0, saturation=0,
                  hue=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    torch.testing.assert_close(augment(x, cfg), torch.full((4, 3, 8, 8), 128 / 255), rtol=0, atol=1e-5)


def test_reproducible_with_a_generator():
    x, cfg = images(), Augment(size=24)
    a = augment(x, cfg, torch.Generator().manual_seed(5))
    b = augment(x, cfg, torch.Generator().manual_seed(5))
    c = augment(x, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        augment(torch.rand(2, 3, 8, 8), Augment(size=8))
    with pytest.raises(ValueError, match="scale"):
        Augment(size=8, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="size"):
        Augment(size=0)
    with pytest.raises(ValueError, match="flip_p"):
        Augment(size=8, flip_p=2)
