"""Backbones, built from torchvision's own parts:

    resnet18, resnet50, resnet101, resnext50_32x4d   torchvision's BasicBlock/Bottleneck
    efficientnet_b0                                  torchvision's EfficientNet (B0's stage table)
    vit_tiny, vit_small, vit_base                    torchvision's VisionTransformer (ViT-Ti/S/B)

A backbone maps images to features (`feature_dim` wide): the avg-pooled last feature map
(CNNs) or the class token's final embedding (ViTs); these are the paper's features.

Small images (`small_images`, up to 96 px) get a stem that keeps their resolution: the
CIFAR stem for ResNets (3x3 convolution, stride 1, no max-pool), stride 1 in the stem and
the first downsampling stage for EfficientNet (a 32 px image ends at 4x4, as in the
ResNets), and for ViTs a patch size suited to the input (`vit_patch`: 4 px at 32 px, 16 px
at 224 px). The CNNs take a width suffix (`resnet18-w0.25`: every stage a quarter as wide)
so that real experiments fit a small CPU. At width 1 with the ImageNet stem (images above
96 px; ViTs at 224 px, 16 px patches) the parameter names and shapes are torchvision's
minus the classifier (`fc`, `classifier`, `heads`), so torchvision checkpoints load into
them with strict key matching (ViT-Ti/S have no torchvision constructor; theirs are
VisionTransformer's names, as for ViT-B; at other sizes with 16 px patches, after
torchvision's interpolate_embeddings)."""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.efficientnet import EfficientNet, MBConvConfig
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
from torchvision.models.vision_transformer import VisionTransformer

# name: (block, blocks per stage, groups, width per group)
_RESNETS = {"resnet18": (BasicBlock, (2, 2, 2, 2), 1, 64), "resnet50": (Bottleneck, (3, 4, 6, 3), 1, 64),
            "resnet101": (Bottleneck, (3, 4, 23, 3), 1, 64),
            "resnext50_32x4d": (Bottleneck, (3, 4, 6, 3), 32, 4)}
# name: (attention heads, hidden width); 12 layers and an MLP 4x as wide for all three
_VITS = {"vit_tiny": (3, 192), "vit_small": (6, 384), "vit_base": (12, 768)}
ARCH_NAMES = [*_RESNETS, "efficientnet_b0", *_VITS]
ARCHS = (", ".join(ARCH_NAMES) + " (the CNNs with an optional width suffix such as resnet18-w0.25)")
_ARCH = re.compile(r"^([a-z0-9_]+)(?:-w(\d+(?:\.\d+)?))?$")


def vit_patch(image_size: int) -> int:
    """A ViT's patch for an input size: 4 px below 64 px, 8 px below 128, 16 px from 128
    on; grids of 8x8 to 16x16 patches from 32 to 256 px (32 px: 8x8, 224 px: 14x14)."""
    return 4 if image_size < 64 else 8 if image_size < 128 else 16


def parse_arch(arch: str, image_size: Optional[int] = None):
    """'resnet18-w0.5' -> ('resnet18', 0.5); ValueError on anything else, and (given
    image_size) on a ViT whose patch does not divide the images."""
    m = _ARCH.match(arch) if isinstance(arch, str) else None
    if not m or m.group(1) not in ARCH_NAMES:
        raise ValueError(f"unknown architecture {arch!r}: expected one of {ARCHS}")
    name, width = m.group(1), float(m.group(2)) if m.group(2) else 1.0
    if name in _VITS and m.group(2):
        raise ValueError(f"architecture {arch!r}: ViTs take no width suffix (vit_tiny, vit_small, vit_base "
                         "are the widths)")
    if not 0 < width <= 4:
        raise ValueError(f"architecture {arch!r}: the width must be in (0, 4], got {width}")
    if name.startswith("resnext") and width < 0.25:
        raise ValueError(f"architecture {arch!r}: ResNeXt's 32 groups of 4 x width channels need a width "
                         f">= 0.25, got {width}")
    if name in _VITS and image_size is not None and image_size % vit_patch(image_size):
        raise ValueError(f"architecture {arch!r} at {image_size} px: the image size must be a multiple of "
                         f"its {vit_patch(image_size)} px patch")
    return name, width


class ResNet(nn.Module):
    """torchvision's ResNet/ResNeXt without the classifier, with a selectable stem and width."""

    def __init__(self, block, layers, width: float = 1.0, small_images: bool = False,
                 groups: int = 1, width_per_group: int = 64):
        super().__init__()
        widths = [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.inplanes, self.groups, self.base_width = widths[0], groups, width_per_group
        if small_images:  # CIFAR stem: keep the resolution of 32-96 px images
            self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[3] * block.expansion
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        kw = dict(groups=self.groups, base_width=self.base_width)
        layers = [block(self.inplanes, planes, stride, downsample, **kw)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def efficientnet_b0(width: float = 1.0, small_images: bool = False) -> EfficientNet:
    """torchvision's EfficientNet-B0 (its stage table and initialisation) without the
    classifier: avg-pooled features, 1280 wide at width 1. Stochastic depth is off: it draws
    from the global random generator, which would break exact resume and DDP = one process."""
    stage = partial(MBConvConfig, width_mult=width)
    down = 1 if small_images else 2  # the first stride-2 stage (16 -> 24 channels)
    net = EfficientNet([stage(1, 3, 1, 32, 16, 1), stage(6, 3, down, 16, 24, 2), stage(6, 5, 2, 24, 40, 2),
                        stage(6, 3, 2, 40, 80, 3), stage(6, 5, 1, 80, 112, 3), stage(6, 5, 2, 112, 192, 4),
                        stage(6, 3, 1, 192, 320, 1)], dropout=0.2, stochastic_depth_prob=0.0)
    if small_images:
        net.features[0][0].stride = (1, 1)
    net.classifier = nn.Identity()
    net.feature_dim = net.features[-1].out_channels
    return net


class ViT(VisionTransformer):
    """torchvision's VisionTransformer without its heads: the class token's final embedding
    (after the last LayerNorm), `hidden` wide. An input of another size than the one built
    for (a multiple of the patch: `simcore extract --size`) gets the position embeddings
    resized bicubically, as torchvision's interpolate_embeddings resizes them in weights."""

    def __init__(self, image_size: int, num_heads: int, hidden: int):
        super().__init__(image_size, vit_patch(image_size), num_layers=12, num_heads=num_heads,
                         hidden_dim=hidden, mlp_dim=4 * hidden)
        self.heads = nn.Identity()
        self.feature_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"a ViT with {p} px patches needs image sizes that are multiples of {p}, got {h}x{w}")
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # [n, patches, hidden]
        x = torch.cat([self.class_token.expand(n, -1, -1), x], 1)
        pos = self.encoder.pos_embedding
        if pos.shape[1] != x.shape[1]:
            pos = _resize_positions(pos, h // p, w // p)
        x = self.encoder.ln(self.encoder.layers(self.encoder.dropout(x + pos)))
        return x[:, 0]


def _resize_positions(pos: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[1, 1 + g*g, d] position embeddings (class token first) resized to a rows x cols grid."""
    g = math.isqrt(pos.shape[1] - 1)
    grid = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=True)  # as torchvision
    return torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], 1)


def build_backbone(arch: str, small_images: bool, image_size: Optional[int] = None) -> nn.Module:
    """A freshly initialised backbone; small_images selects the small-image stem (<= 96 px).
    ViTs are built for image_size (default: 32 px with small_images, 224 px without)."""
    image_size = image_size or (32 if small_images else 224)
    name, width = parse_arch(arch, image_size)
    if name in _RESNETS:
        block, layers, groups, per_group = _RESNETS[name]
        return ResNet(block, layers, width, small_images, groups, per_group)
    if name == "efficientnet_b0":
        return efficientnet_b0(width, small_images)
    return ViT(image_size, *_VITS[name])
