"""Backbones: ResNet-18/50 as torchvision builds them, optionally with the CIFAR stem
(3x3 convolution, stride 1, no max-pool) for small images, and width-scaled ResNets
(`resnet18-w0.25`: every stage a quarter as wide) so that real experiments fit a small CPU.

A backbone maps images to avg-pooled features (the paper's features), `feature_dim` wide.
At width 1 with the ImageNet stem (images above 96 px) the parameter names and shapes are
torchvision's (minus `fc`), so torchvision checkpoints load into it."""
from __future__ import annotations

import re

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

_DEPTHS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}
_ARCH = re.compile(r"^(resnet18|resnet50)(?:-w(\d+(?:\.\d+)?))?$")
ARCHS = "resnet18, resnet50, or either with a width suffix such as resnet18-w0.25"


def parse_arch(arch: str):
    """'resnet18-w0.5' -> ('resnet18', 0.5); ValueError on anything else."""
    m = _ARCH.match(arch) if isinstance(arch, str) else None
    if not m:
        raise ValueError(f"unknown architecture {arch!r}: expected {ARCHS}")
    width = float(m.group(2)) if m.group(2) else 1.0
    if not 0 < width <= 4:
        raise ValueError(f"architecture {arch!r}: the width must be in (0, 4], got {width}")
    return m.group(1), width


class ResNet(nn.Module):
    """torchvision's ResNet without the classifier, with a selectable stem and width."""

    def __init__(self, block, layers, width: float = 1.0, small_images: bool = False):
        super().__init__()
        widths = [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
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
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def build_backbone(arch: str, small_images: bool) -> ResNet:
    """A freshly initialised backbone; small_images selects the CIFAR stem (<= 96 px)."""
    name, width = parse_arch(arch)
    block, layers = _DEPTHS[name]
    return ResNet(block, layers, width, small_images)
