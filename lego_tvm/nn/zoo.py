"""Bundled Lego models.

``lego_vgg16`` is the authors' released CIFAR-10 model, module for module, so their
checkpoints load into it. ``lego_resnet50`` is our construction after the paper's
description (no code for it was released): a bottleneck ResNet-50 (the torchvision v1.5
layout, stride on the 3x3 conv) whose 1x1 and 3x3 convs inside every residual block are
Lego convs; the stem, the shortcut projections and the classifier stay ordinary.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .lego_conv import LegoConv2d

VGG16_PLAN = [64, 64, 64, "M", 128, 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"]


class LegoVGG16(nn.Module):
    """The released ``lego_vgg16``: same submodule names (``features``, ``classifier``)."""

    def __init__(self, n_split: int = 2, n_lego: float = 0.5, n_classes: int = 10):
        super().__init__()
        self.n_split, self.n_lego, self.n_classes = n_split, n_lego, n_classes
        layers: list[nn.Module] = []
        in_channels = 3
        for i, width in enumerate(VGG16_PLAN):
            if width == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            conv = (nn.Conv2d(in_channels, width, 3, padding=1) if i == 0
                    else LegoConv2d(in_channels, width, 3, n_split, n_lego))
            layers += [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            in_channels = width
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, n_classes)

    def forward(self, x):
        out = self.features(x)
        return self.classifier(out.view(out.size(0), -1))


class LegoBottleneck(nn.Module):
    """ResNet bottleneck whose three convs are Lego convs (stride on the 3x3 one)."""
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, n_split: int, n_lego: float):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = LegoConv2d(in_channels, width, 1, n_split, n_lego)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = LegoConv2d(width, width, 3, n_split, n_lego, stride=stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = LegoConv2d(width, out_channels, 1, n_split, n_lego)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class LegoResNet50(nn.Module):
    """Bottleneck ResNet-50 for 224x224 ImageNet input with Lego convs in every block."""

    def __init__(self, n_split: int = 2, n_lego: float = 0.5, n_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages, in_channels = [], 64
        for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
            stage = []
            for b in range(blocks):
                stage.append(LegoBottleneck(in_channels, width, stride if b == 0 else 1,
                                            n_split, n_lego))
                in_channels = width * LegoBottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, n_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def lego_vgg16(n_split: int = 2, n_lego: float = 0.5, n_classes: int = 10) -> LegoVGG16:
    return LegoVGG16(n_split, n_lego, n_classes)


def lego_resnet50(n_split: int = 2, n_lego: float = 0.5, n_classes: int = 1000) -> LegoResNet50:
    return LegoResNet50(n_split, n_lego, n_classes)


# name -> (constructor, example input shape at batch 1)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lego_vgg16": (lego_vgg16, (1, 3, 32, 32)),
    "lego_resnet50": (lego_resnet50, (1, 3, 224, 224)),
}


def get_model(name: str, batch: int = 1, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model in eval mode with seeded random weights and BatchNorm statistics, and a
    random example input of batch ``batch``."""
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; choose one of {sorted(MODELS)}")
    make, shape = MODELS[name]
    gen = torch.manual_seed(seed)
    model = make()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for module in norms:
        module.weight.data.uniform_(0.5, 1.5, generator=gen)
        module.bias.data.uniform_(-0.5, 0.5, generator=gen)
    _calibrate(model, norms, torch.randn((2,) + shape[1:], generator=gen))
    for module in norms:
        # Statistics near, not at, the calibration batch's: folding BatchNorm stays exercised.
        std = module.running_var.sqrt()
        module.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=gen))
        module.running_var.mul_(torch.empty_like(std).uniform_(0.7, 1.4, generator=gen))
    example = torch.randn((batch,) + shape[1:], generator=gen)
    return model.eval(), example


def _calibrate(model: nn.Module, norms: list[nn.BatchNorm2d], batch: torch.Tensor) -> None:
    """Set every BatchNorm's statistics to those of its input on ``batch``. Untrained Lego
    convs shrink activations about 30-fold per layer (small coefficients): with made-up
    statistics, BatchNorm's shift swamps the signal and the output of a deep model no longer
    depends on its input, which would make any whole-model check vacuous."""
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None                 # cumulative average: this batch's statistics
    model.train()
    with torch.no_grad():
        model(batch)
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
