"""The SimCLR augmentation applied to a whole batch with tensor operations, on the device
that holds the batch (the small-image fast path: no per-image Python, no DataLoader).

    views = augment(images_uint8, Augment(size=32), generator)   # [B, 3, 32, 32] float

Per image: a random resized crop (scale and aspect ratio as torchvision's, sampled once and
clamped to the image instead of torchvision's ten rejection tries), a horizontal flip, colour
jitter (brightness, contrast, saturation, hue; applied in that fixed order, not in
torchvision's random order; the hue shift is a rotation of the chroma plane in YIQ space,
close to torchvision's HSV shift for the small shifts used), random grayscale, then
normalisation. Crops are resampled bilinearly with one batched grid_sample."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# ImageNet statistics: the usual choice for natural photos.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Augment:
    size: int
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    mean: Tuple[float, float, float] = MEAN
    std: Tuple[float, float, float] = STD

    def __post_init__(self):
        if not (isinstance(self.size, int) and self.size >= 1):
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        for name in ("flip_p", "jitter_p", "gray_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")


def _uniform(n: int, lo: float, hi: float, g: Optional[torch.Generator], device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def _crop_grid(n: int, cfg: Augment, g, device) -> torch.Tensor:
    """Sampling grids of random resized crops (and flips), in grid_sample's [-1, 1] units."""
    area = _uniform(n, cfg.scale[0], cfg.scale[1], g, device)
    log_ratio = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), g, device)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width and height, as image fractions
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (w / 2 + (1 - w) * torch.rand(n, generator=g, device=device)) * 2 - 1
    cy = (h / 2 + (1 - h) * torch.rand(n, generator=g, device=device)) * 2 - 1
    flip = torch.rand(n, generator=g, device=device) < cfg.flip_p
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = torch.where(flip, -w, w)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return F.affine_grid(theta, [n, 3, cfg.size, cfg.size], align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, gch, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * gch + _GRAY[2] * b).unsqueeze(1)


def _jitter(x: torch.Tensor, cfg: Augment, g, on: torch.Tensor) -> torch.Tensor:
    """Colour jitter of the images where `on` is true (factors 1 and shift 0 elsewhere)."""
    n, device = x.shape[0], x.device

    def factor(strength):
        f = _uniform(n, max(0.0, 1 - strength), 1 + strength, g, device)
        return torch.where(on, f, torch.ones_like(f)).view(n, 1, 1, 1)

    x = (x * factor(cfg.brightness)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(cfg.contrast) + mean).clamp(0, 1)
    gray = _gray(x)
    x = ((x - gray) * factor(cfg.saturation) + gray).clamp(0, 1)
    if cfg.hue > 0:
        shift = _uniform(n, -cfg.hue, cfg.hue, g, device)
        angle = (2 * math.pi * torch.where(on, shift, torch.zeros_like(shift))).view(n, 1, 1)
        yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                           device=device)
        y, i, q = torch.einsum("ck,nkhw->nchw", yiq, x).unbind(1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        i, q = i * cos - q * sin, i * sin + q * cos
        x = torch.einsum("ck,nkhw->nchw", torch.linalg.inv(yiq), torch.stack([y, i, q], 1)).clamp(0, 1)
    return x


def augment(images: torch.Tensor, cfg: Augment, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """images: uint8 [B, 3, H, W] (any device). Returns [B, 3, size, size] in the default
    float dtype (float32; float64 in the exactness tests), normalised.
    `generator` (on the images' device) makes the draw reproducible."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    n, device = images.shape[0], images.device
    x = images.to(torch.get_default_dtype()).div_(255)
    x = F.grid_sample(x, _crop_grid(n, cfg, generator, device), mode="bilinear",
                      padding_mode="reflection", align_corners=False)
    on = torch.rand(n, generator=generator, device=device) < cfg.jitter_p
    x = _jitter(x, cfg, generator, on)
    gray = (torch.rand(n, generator=generator, device=device) < cfg.gray_p).view(n, 1, 1, 1)
    x = torch.where(gray, _gray(x).expand_as(x), x)
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def normalize(images: torch.Tensor, cfg: Augment) -> torch.Tensor:
    """The evaluation transform: uint8 [B, 3, H, W] -> normalised float, resized to cfg.size."""
    x = images.float().div(255)
    if x.shape[-1] != cfg.size or x.shape[-2] != cfg.size:
        x = F.interpolate(x, size=(cfg.size, cfg.size), mode="bilinear", antialias=True,
                          align_corners=False)
    mean = torch.tensor(cfg.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
