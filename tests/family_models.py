"""Small hand-written torch classifiers of the architecture families real exporters produce.

Each follows the published layer pattern of its family at a narrow width and a 32-34 px input, and is
initialised by ``reference_models.init_deterministic`` (Kaiming-normal weights, non-trivial BatchNorm
statistics), in eval mode. Gates (squeeze-excitation) and gated activations are modules, so that
``gates.detached_gates`` can hold them constant for the oracle. No module is in-place.

``FAMILIES``: name -> ``ModelSpec(factory, input_shape)``, the same table shape as
``reference_models.REFERENCE_MODELS``:

* ``densenet_like``      dense blocks (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, concatenated), transitions with
  2x2 average pooling, BN-ReLU head; its BatchNorms follow a Concat, so even a folding export keeps them;
* ``mobilenet_like``     MobileNetV2 inverted residuals (ReLU6, depthwise) and MobileNetV3 blocks
  (HardSwish, 5x5 depthwise, hard-sigmoid squeeze-excitation), V3 head Linear-HardSwish-Dropout-Linear;
* ``efficientnet_like``  EfficientNet-B0 MBConv blocks (SiLU, sigmoid squeeze-excitation with SiLU
  inside, skip), SiLU head;
* ``inception_like``     Inception-A blocks (1x1 | 1x1-5x5 | 1x1-3x3-3x3 | 3x3 stride-1 average pool-1x1,
  concatenated), stride-2 max pool between them;
* ``squeezenet_like``    SqueezeNet 1.1 fire modules, ceil-mode 3x3/2 max pools on even sizes (where
  ceil mode matters), Conv1x1-ReLU-global-average classifier;
* ``vgg_bn_gelu``        VGG16 with BatchNorm (Conv-BN-ReLU), classifier Linear-GELU-Dropout-Linear-
  GELU(tanh)-Dropout-Linear: both GELU decompositions;
* ``senet_like``, ``attention_like``  Sigmoid/Hardsigmoid and Softmax gates, reshaped on the way;
* ``vit_like``           a vision transformer: multi-head self-attention (MatMuls of two data tensors,
  Softmax weights), LayerNorm, GELU MLPs, class token and position embedding; ``vit_einsum_like`` with
  the products as ``torch.einsum``, ``vit_sdpa_like`` with ``F.scaled_dot_product_attention``;
* ``resnext_like``       bottleneck blocks with grouped 3x3 convolutions (8 groups);
* ``shufflenet_like``    ShuffleNetV2 units: channel split (Split/Slice), Concat, channel shuffle
  (Reshape-Transpose-Reshape), strided depthwise convolutions, a max pool;
* ``fasternet_like``     FasterNet's partial convolution assigned in place to a slice of a copy
  (ScatterND; TorchScript computes its indices from the batch size);
* ``convnext_like``      ConvNeXt: patchify Conv, LayerNorm over channels between two Transposes,
  depthwise 7x7, GELU MLP on channels-last tensors, layer scale, skip;
* ``convnextv2_like``    ConvNeXt V2: the MLP's global response normalization (GRN: the L2 norm over the
  positions, over its mean over the channels, scales the features), no layer scale;
* ``swin_like``          Swin: attention within windows (6-D Reshape-Transpose partitions), the second
  block's windows shifted by ``torch.roll`` (Slice + Concat; the dynamo exporter computes the slice
  bounds from ``Shape`` with ``start``/``end``);
* ``fastai_like``        fastai's classifier head: global max and average pooling concatenated
  (ReduceMax from the dynamo exporter), BatchNorm1d, Linear-ReLU-BatchNorm1d-Linear;
* ``cosine_like``        a cosine (CLIP-style zero-shot) head: ``F.normalize`` features against normalized
  class embeddings, and ``F.normalize`` over the channels of a feature map;
* ``cosine_similarity_like`` ``F.cosine_similarity`` against class embeddings (TorchScript divides the
  dot products by the norms' product);
* ``maxout_like``        maxout: ``torch.maximum``/``torch.minimum`` of linear pieces (Max/Min of two and
  three data tensors) and a channel maxout by ``amax`` (ReduceMax);
* ``padding_modes_like`` convolutions padded by reflection, replication and wrapping (Pad reflect, edge,
  wrap).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reference_models import ModelSpec, VGG16Like, init_deterministic


def conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    """Conv (no bias) - BN - activation (None for none)."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


class GlobalPool(nn.Module):
    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def randomize_layer_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Give every LayerNorm of ``model`` weights in [0.5, 1.5] and small biases (not the identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0, 0.1, generator=generator)


# ---- DenseNet --------------------------------------------------------------------------------------

class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bottleneck=4):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, bottleneck * growth, 1, bias=False),
                                  nn.BatchNorm2d(bottleneck * growth), nn.ReLU(),
                                  nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False))

    def forward(self, features):
        return torch.cat([features, self.body(features)], 1)


class DenseNetLike(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, growth=6, blocks=(3, 3), num_classes=10, width=12, stem=(3, 1)):
        super().__init__()
        kernel, stride = stem
        layers = [nn.Conv2d(3, width, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                  nn.MaxPool2d(3, 2, 1)]
        for i, depth in enumerate(blocks):
            for _ in range(depth):
                layers.append(DenseLayer(width, growth))
                width += growth
            if i < len(blocks) - 1:
                layers += [nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width // 2, 1, bias=False),
                           nn.AvgPool2d(2, 2)]
                width //= 2
        layers += [nn.BatchNorm2d(width), nn.ReLU(), GlobalPool()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        init_deterministic(self, seed)

    def forward(self, x):
        return self.classifier(self.features(x))


# ---- MobileNetV2 / V3 ------------------------------------------------------------------------------

class SqueezeExcite(nn.Module):
    """x · gate(Conv1x1(act(Conv1x1(avgpool(x))))) with the gate a module (Sigmoid or Hardsigmoid)."""

    def __init__(self, channels, squeezed, act=nn.ReLU, gate=nn.Hardsigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.act = nn.Conv2d(channels, squeezed, 1), act()
        self.fc2, self.gate = nn.Conv2d(squeezed, channels, 1), gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Expand 1x1 (unless hidden == cin) - depthwise kxk - (SE) - project 1x1 (linear), skip when shapes allow."""

    def __init__(self, cin, cout, hidden, k=3, stride=1, act=nn.ReLU6, se=None):
        super().__init__()
        layers = [conv_bn(cin, hidden, 1, act=act)] if hidden != cin else []
        layers.append(conv_bn(hidden, hidden, k, stride, groups=hidden, act=act))
        if se is not None:
            layers.append(se(hidden))
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.skip else self.body(x)


class MobileNetLike(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        v3_se = lambda c: SqueezeExcite(c, max(4, c // 4), nn.ReLU, nn.Hardsigmoid)  # noqa: E731
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2, act=nn.Hardswish),
            InvertedResidual(8, 8, 8, act=nn.ReLU6),                         # V2, no expansion, skip
            InvertedResidual(8, 12, 32, stride=2, act=nn.ReLU6),              # V2
            InvertedResidual(12, 12, 36, act=nn.ReLU6),                       # V2, skip
            InvertedResidual(12, 16, 36, k=5, stride=2, act=nn.Hardswish, se=v3_se),  # V3
            InvertedResidual(16, 16, 48, k=5, act=nn.Hardswish, se=v3_se),    # V3, skip
            conv_bn(16, 48, 1, act=nn.Hardswish),
            GlobalPool())
        self.classifier = nn.Sequential(nn.Linear(48, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, num_classes))
        init_deterministic(self, seed)

    def forward(self, x):
        return self.classifier(self.features(x))


def _make_divisible(value, divisor=8):
    """torchvision's channel rounding."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# torchvision's MobileNetV3-Large: (cin, kernel, hidden, cout, squeeze-excitation, hard-swish, stride)
V3_LARGE = [(16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
            (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
            (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
            (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
            (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1)]


class MobileNetV3Large(nn.Module):
    """Full-size MobileNetV3-Large (torchvision's layer shapes, random weights), 3x224x224, 1000 classes."""

    input_shape = (3, 224, 224)

    def __init__(self, seed=0, num_classes=1000):
        super().__init__()
        blocks = [conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
        for cin, k, hidden, cout, se, hs, stride in V3_LARGE:
            excite = (lambda c: SqueezeExcite(c, _make_divisible(c // 4), nn.ReLU, nn.Hardsigmoid)) if se else None
            blocks.append(InvertedResidual(cin, cout, hidden, k, stride, nn.Hardswish if hs else nn.ReLU, excite))
        blocks += [conv_bn(160, 960, 1, act=nn.Hardswish), GlobalPool()]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(1280, num_classes))
        init_deterministic(self, seed)

    def forward(self, x):
        return self.classifier(self.features(x))


def densenet121(seed=0) -> nn.Module:
    """Full-size DenseNet-121 (torchvision's layer shapes, random weights), 3x224x224, 1000 classes."""
    model = DenseNetLike(seed, growth=32, blocks=(6, 12, 24, 16), num_classes=1000, width=64, stem=(7, 2))
    model.input_shape = (3, 224, 224)
    return model


# ---- EfficientNet-B0 -------------------------------------------------------------------------------

class EfficientNetLike(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        se = lambda c: SqueezeExcite(c, max(2, c // 8), nn.SiLU, nn.Sigmoid)  # noqa: E731
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2, act=nn.SiLU),
            InvertedResidual(8, 8, 8, act=nn.SiLU, se=se),                   # MBConv1, skip
            InvertedResidual(8, 12, 48, stride=2, act=nn.SiLU, se=se),        # MBConv6 3x3
            InvertedResidual(12, 12, 72, k=5, act=nn.SiLU, se=se),            # MBConv6 5x5, skip
            conv_bn(12, 48, 1, act=nn.SiLU),
            GlobalPool(), nn.Dropout(0.2))
        self.classifier = nn.Linear(48, num_classes)
        init_deterministic(self, seed)

    def forward(self, x):
        return self.classifier(self.features(x))


# ---- Inception -------------------------------------------------------------------------------------

def basic_conv(cin, cout, k, **kw):
    """torchvision's BasicConv2d: Conv (no bias) - BN(eps 1e-3) - ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, bias=False, **kw), nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU())


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = basic_conv(cin, 8, 1)
        self.branch5x5 = nn.Sequential(basic_conv(cin, 6, 1), basic_conv(6, 8, 5, padding=2))
        self.branch3x3dbl = nn.Sequential(basic_conv(cin, 8, 1), basic_conv(8, 12, 3, padding=1),
                                          basic_conv(12, 12, 3, padding=1))
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)  # count_include_pad=True, as F.avg_pool2d in torchvision
        self.branch_pool = basic_conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5(x), self.branch3x3dbl(x),
                          self.branch_pool(self.pool(x))], 1)


class InceptionLike(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            basic_conv(3, 8, 3, stride=2), basic_conv(8, 16, 3, padding=1), nn.MaxPool2d(3, 2),
            InceptionA(16, 4), InceptionA(32, 8), nn.MaxPool2d(3, 2), InceptionA(36, 8),
            GlobalPool(), nn.Dropout(0.5))
        self.fc = nn.Linear(36, num_classes)
        init_deterministic(self, seed)

    def forward(self, x):
        return self.fc(self.features(x))


# ---- SqueezeNet ------------------------------------------------------------------------------------

class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.expand1x1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.expand3x3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


class SqueezeNetLike(nn.Module):
    input_shape = (3, 34, 34)  # 34 → conv 16 → ceil-mode pool 8 (floor would give 7) → 4 (floor 3)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 4, 8), Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 6, 12), Fire(24, 6, 12))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(24, num_classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))
        init_deterministic(self, seed)

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


# ---- VGG with BatchNorm and a GELU head ------------------------------------------------------------

class VGGBNGelu(VGG16Like):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__(seed=seed, widths=(8, 8, 16, 16, 16), hidden=32, num_classes=num_classes,
                         pool_size=1, batch_norm=True)
        self.classifier[1] = nn.GELU()
        self.classifier[4] = nn.GELU(approximate="tanh")
        init_deterministic(self, seed)


# ---- SENet's squeeze-excitation: Linear gates reshaped and broadcast before the product ---------------

class SENetLike(nn.Module):
    """Conv blocks whose squeeze-excitation is SENet's reference form: mean → Linear → ReLU → Linear →
    gate → view(N, C, 1, 1) (→ expand_as(x)) → x · gate; Sigmoid in one block, Hardsigmoid in the other."""

    input_shape = (3, 16, 16)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.se1 = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8), nn.Sigmoid())
        self.se2 = nn.Sequential(nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 16), nn.Hardsigmoid())
        self.fc = nn.Linear(16, num_classes)
        init_deterministic(self, seed)

    @staticmethod
    def _excite(x, se, expand):
        gate = se(x.mean((2, 3))).view(x.shape[0], x.shape[1], 1, 1)
        return x * (gate.expand_as(x) if expand else gate)

    def forward(self, x):
        x = self._excite(torch.relu(self.conv1(x)), self.se1, expand=False)
        x = self._excite(torch.relu(self.conv2(x)), self.se2, expand=True)
        return self.fc(x.mean((2, 3)))


# ---- attention weights from a Softmax, as gates ----------------------------------------------------

class AttentionLike(nn.Module):
    """A conv block weighted by a spatial attention map (1x1 Conv → Softmax over positions → view) and
    by channel attention (mean → Linear → Softmax over channels → [:, :, None, None]), then pooled."""

    input_shape = (3, 12, 12)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.where, self.spatial = nn.Conv2d(8, 1, 1), nn.Softmax(dim=-1)
        self.which, self.channels = nn.Linear(8, 8), nn.Softmax(dim=1)
        self.fc = nn.Linear(8, num_classes)
        init_deterministic(self, seed)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        n, _, h, w = f.shape
        spatial = self.spatial(self.where(f).flatten(2)).view(n, 1, h, w)
        channels = self.channels(self.which(f.mean((2, 3))))[:, :, None, None]
        return self.fc((f * spatial * channels).sum((2, 3)))


# ---- GroupNorm: exported as InstanceNormalization between two Reshapes -----------------------------

class GroupNormLike(nn.Module):
    """Residual Conv blocks normalized by GroupNorm (as in ResNet-GN and diffusion U-Nets), one of them
    with one channel per group."""

    input_shape = (3, 16, 16)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(16, 16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(2, 16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GroupNorm(8, 32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)
        init_deterministic(self, seed)
        with torch.no_grad():  # scales and shifts other than GroupNorm's defaults (1, 0)
            for norm in (m for m in self.modules() if isinstance(m, nn.GroupNorm)):
                norm.weight.copy_(torch.linspace(0.5, 1.5, norm.num_channels))
                norm.bias.copy_(torch.linspace(-0.2, 0.2, norm.num_channels))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(self.down(x).mean((2, 3)))


# ---- RMSNorm, as LLaMA-style code writes it out ---------------------------------------------------

class WrittenRMSNorm(nn.RMSNorm):
    """``x · rsqrt(mean(x²) + ε) · γ`` written out, which both exporters export (TorchScript has no
    export of ``nn.RMSNorm``'s own op; the dynamo exporter writes that op out the same way)."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RMSNormLike(nn.Module):
    """Tokens from a patch Conv through a pre-norm residual MLP block with RMSNorm, a final RMSNorm, the
    mean over tokens and a head; ``norm`` makes the RMSNorm modules (``WrittenRMSNorm`` or ``nn.RMSNorm``)."""

    input_shape = (3, 16, 16)

    def __init__(self, seed=0, num_classes=10, dim=16, norm=WrittenRMSNorm):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1, self.norm2 = norm(dim, eps=1e-6), norm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.SiLU(), nn.Linear(32, dim))
        self.head = nn.Linear(dim, num_classes)
        init_deterministic(self, seed)
        with torch.no_grad():
            for scale in (self.norm1.weight, self.norm2.weight):
                scale.copy_(torch.linspace(0.5, 1.5, dim))

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.mlp(self.norm1(x))
        return self.head(self.norm2(x).mean(1))


# ---- a vision transformer: attention as a MatMul of two data tensors -----------------------------

class Attention(nn.Module):
    """Multi-head self-attention as ViT writes it: one qkv Linear, softmax(q·kᵀ·scale)·v, a projection;
    ``form`` "einsum" writes both products as ``torch.einsum``, "sdpa" calls
    ``F.scaled_dot_product_attention`` (the Attention op from the dynamo exporter at opset 23), except
    with ``hold_statistics`` (set by ``gates.detached_gates``), where the weights come from the Softmax
    module, detached."""

    def __init__(self, dim, heads, form="matmul"):
        super().__init__()
        self.heads, self.scale, self.form = heads, (dim // heads) ** -0.5, form
        self.qkv, self.proj, self.softmax = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Softmax(dim=-1)
        self.hold_statistics = False

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.form == "einsum":
            weights = self.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) * self.scale)
            mixed = torch.einsum("bhqk,bhkd->bhqd", weights, v)
        elif self.form == "sdpa" and not self.hold_statistics:
            mixed = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            weights = self.softmax(q @ k.transpose(-2, -1) * self.scale)
            mixed = weights @ v
        return self.proj(mixed.transpose(1, 2).reshape(b, t, d))


class ViTLike(nn.Module):
    """ViT: patch-embedding Conv, class token (expanded to the batch) and position embedding, pre-norm
    blocks (LayerNorm → attention → skip, LayerNorm → Linear-GELU-Linear → skip), LayerNorm, the class
    token's head."""

    input_shape = (3, 16, 16)

    def __init__(self, seed=0, num_classes=10, dim=32, heads=4, depth=2, form="matmul"):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls, self.position = nn.Parameter(torch.zeros(1, 1, dim)), nn.Parameter(torch.zeros(1, 17, dim))
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(dim), "attention": Attention(dim, heads, form), "norm2": nn.LayerNorm(dim),
            "mlp": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))})
            for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)
        init_deterministic(self, seed)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed)
            self.cls.normal_(0, 0.5, generator=generator)
            self.position.normal_(0, 0.5, generator=generator)
            randomize_layer_norms(self, generator)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        for block in self.blocks:
            x = x + block["attention"](block["norm1"](x))
            x = x + block["mlp"](block["norm2"](x))
        return self.head(self.norm(x)[:, 0])


class EinsumViTLike(ViTLike):
    """``ViTLike`` with its attention products written as ``torch.einsum``."""

    def __init__(self, seed=0, num_classes=10):
        super().__init__(seed, num_classes, form="einsum")


class SdpaViTLike(ViTLike):
    """``ViTLike`` calling ``F.scaled_dot_product_attention``, as timm's ViTs do."""

    def __init__(self, seed=0, num_classes=10):
        super().__init__(seed, num_classes, form="sdpa")


# ---- ResNeXt: grouped 3x3 convolutions in bottleneck blocks ----------------------------------------

class ResNeXtBlock(nn.Module):
    """1x1 - grouped 3x3 (``groups`` groups) - 1x1, BatchNorms, skip, ReLU after the sum."""

    def __init__(self, channels, width, groups):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, width, 1), conv_bn(width, width, 3, groups=groups),
                                  conv_bn(width, channels, 1, act=None))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.body(x))


class ResNeXtLike(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.blocks = nn.Sequential(ResNeXtBlock(32, 64, groups=8), ResNeXtBlock(32, 64, groups=8))
        self.pool, self.fc = GlobalPool(), nn.Linear(32, num_classes)
        init_deterministic(self, seed)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))))


# ---- ShuffleNetV2: channel split, concatenation and channel shuffle (Reshape-Transpose-Reshape) -----

def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """torchvision's InvertedResidual of ShuffleNetV2: stride 1 splits the channels in two and transforms
    one half; stride 2 transforms the input in two branches; both concatenate and shuffle."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, half = stride, cout // 2
        if stride > 1:
            self.left = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1))
        self.right = nn.Sequential(conv_bn(cin if stride > 1 else half, half, 1),
                                   conv_bn(half, half, 3, stride, groups=half, act=None), conv_bn(half, half, 1))

    def forward(self, x):
        if self.stride == 1:
            kept, changed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.right(changed)), 1)
        else:
            out = torch.cat((self.left(x), self.right(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetLike(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.MaxPool2d(3, 2, 1))
        self.stages = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1), ShuffleUnit(32, 64, 2),
                                    ShuffleUnit(64, 64, 1))
        self.head = nn.Sequential(conv_bn(64, 128, 1), GlobalPool(), nn.Linear(128, num_classes))
        init_deterministic(self, seed)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


# ---- FasterNet: a partial convolution assigned in place to a slice of a copy (ScatterND) ----------

class PartialConvBlock(nn.Module):
    """FasterNet's block as its inference code writes it: a 3x3 convolution of the first quarter of the
    channels written back in place (``y[:, :c] = conv(x[:, :c])``, which both exporters write as ScatterND,
    TorchScript with indices computed from the batch size), then a 1x1 MLP and the skip."""

    def __init__(self, channels):
        super().__init__()
        self.part = channels // 4
        self.conv = nn.Conv2d(self.part, self.part, 3, padding=1, bias=False)
        self.mlp = nn.Sequential(conv_bn(channels, 2 * channels, 1), nn.Conv2d(2 * channels, channels, 1))

    def forward(self, x):
        y = x.clone()
        y[:, :self.part] = self.conv(x[:, :self.part])
        return x + self.mlp(y)


class FasterNetLike(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 16, 4, 4), PartialConvBlock(16), conv_bn(16, 32, 2, 2),
                                  PartialConvBlock(32))
        self.head = nn.Sequential(GlobalPool(), nn.Linear(32, num_classes))
        init_deterministic(self, seed)

    def forward(self, x):
        return self.head(self.body(x))


# ---- ConvNeXt: depthwise 7x7, LayerNorm over channels (channels last), GELU MLP, layer scale ------

class Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def channel_norm(channels):
    """ConvNeXt's LayerNorm of NCHW tensors: to channels last, LayerNorm, back."""
    return nn.Sequential(Permute(0, 2, 3, 1), nn.LayerNorm(channels, eps=1e-6), Permute(0, 3, 1, 2))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 → (channels last) LayerNorm → Linear 4x → GELU → Linear → layer scale → skip."""

    def __init__(self, dim):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.mlp = nn.Sequential(Permute(0, 2, 3, 1), nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim),
                                 nn.GELU(), nn.Linear(4 * dim, dim))
        self.scale = nn.Parameter(torch.linspace(0.2, 0.8, dim))

    def forward(self, x):
        return x + (self.scale * self.mlp(self.depthwise(x))).permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), channel_norm(16), ConvNeXtBlock(16),
                                      ConvNeXtBlock(16), channel_norm(16), nn.Conv2d(16, 32, 2, stride=2),
                                      ConvNeXtBlock(32))
        self.norm, self.head = nn.LayerNorm(32, eps=1e-6), nn.Linear(32, num_classes)
        init_deterministic(self, seed)
        randomize_layer_norms(self, torch.Generator().manual_seed(seed))

    def forward(self, x):
        return self.head(self.norm(self.features(x).mean((-2, -1))))


# ---- ConvNeXt V2: global response normalization in the MLP ------------------------------------------

class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN on channels-last tensors, as its authors write it: ``g = ‖x‖₂`` over the positions,
    ``n = g / (mean of g over the channels + ε)``, ``γ·(x·n) + β + x``; with ``hold_statistics`` (set by
    ``gates.detached_gates``) ``n`` is detached, as the product rule holds a statistic of its operand."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(-0.8, 0.8, dim))
        self.beta = nn.Parameter(torch.linspace(0.1, -0.1, dim))
        self.hold_statistics = False

    def forward(self, x):
        g = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        if self.hold_statistics:
            n = n.detach()
        return self.gamma * (x * n) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Depthwise 7x7 → (channels last) LayerNorm → Linear 4x → GELU → GRN → Linear → skip."""

    def __init__(self, dim):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.mlp = nn.Sequential(Permute(0, 2, 3, 1), nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim),
                                 nn.GELU(), GlobalResponseNorm(4 * dim), nn.Linear(4 * dim, dim), Permute(0, 3, 1, 2))

    def forward(self, x):
        return x + self.mlp(self.depthwise(x))


class ConvNeXtV2Like(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), channel_norm(16), ConvNeXtV2Block(16),
                                      channel_norm(16), nn.Conv2d(16, 32, 2, stride=2), ConvNeXtV2Block(32))
        self.norm, self.head = nn.LayerNorm(32, eps=1e-6), nn.Linear(32, num_classes)
        init_deterministic(self, seed)
        randomize_layer_norms(self, torch.Generator().manual_seed(seed))

    def forward(self, x):
        return self.head(self.norm(self.features(x).mean((-2, -1))))


# ---- Swin: attention within windows, shifted by torch.roll ---------------------------------------

class WindowBlock(nn.Module):
    """A Swin block on channels-last tokens: LayerNorm, (cyclic shift by ``shift``), attention within
    ``window``² windows, (shift back), skip; LayerNorm → Linear-GELU-Linear → skip."""

    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1, self.attention, self.norm2 = nn.LayerNorm(dim), Attention(dim, heads), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        n, h, w, c = x.shape
        size, y = self.window, self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = y.view(n, h // size, size, w // size, size, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, size * size, c)
        y = self.attention(y).view(n, h // size, w // size, size, size, c).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(n, h, w, c)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class SwinLike(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10, dim=16):
        super().__init__()
        self.embed = nn.Sequential(nn.Conv2d(3, dim, 4, stride=4), Permute(0, 2, 3, 1))
        self.blocks = nn.Sequential(WindowBlock(dim, 2, 4, shift=0), WindowBlock(dim, 2, 4, shift=2))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)
        init_deterministic(self, seed)
        randomize_layer_norms(self, torch.Generator().manual_seed(seed))

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x)).mean((1, 2))))


# ---- fastai's head: concatenated max and average pooling, BatchNorm1d, Linear-ReLU-Linear ----------

class ConcatPool(nn.Module):
    """fastai's AdaptiveConcatPool2d: global max and global average, side by side."""

    def forward(self, x):
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


class FastaiLike(nn.Module):
    """A ResNet-style body with fastai's ``create_head``: ConcatPool → Flatten → BatchNorm1d → Dropout →
    Linear → ReLU → BatchNorm1d → Dropout → Linear (the max pool: ReduceMax from the dynamo exporter)."""

    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 16, 3, 2), ResNeXtBlock(16, 16, groups=1), conv_bn(16, 32, 3, 2))
        self.head = nn.Sequential(ConcatPool(), nn.Flatten(), nn.BatchNorm1d(64), nn.Dropout(0.25),
                                  nn.Linear(64, 32), nn.ReLU(), nn.BatchNorm1d(32), nn.Dropout(0.5),
                                  nn.Linear(32, num_classes))
        init_deterministic(self, seed)

    def forward(self, x):
        return self.head(self.body(x))


# ---- a cosine classifier: L2-normalized features against L2-normalized class embeddings (CLIP) ---------

class L2Normalize(nn.Module):
    """``F.normalize(x, dim)``; with ``hold_statistics`` (set by ``gates.detached_gates``) the norm is
    computed detached, as the LpNormalization rule holds it."""

    def __init__(self, dim=-1, eps=1e-12):
        super().__init__()
        self.dim, self.eps, self.hold_statistics = dim, eps, False

    def forward(self, x):
        if not self.hold_statistics:
            return nn.functional.normalize(x, dim=self.dim, eps=self.eps)
        return x / x.detach().norm(2, self.dim, keepdim=True).clamp_min(self.eps)


class CosineLike(nn.Module):
    """CNN features projected and L2-normalized, scored as 100 × cosine against fixed class embeddings
    (a CLIP-style zero-shot head; the class embeddings are normalized too, a constant the exporters fold);
    a second L2 normalization over the channels of the feature map (dim 1) inside the body."""

    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10, dim=16):
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 16, 3, 2), L2Normalize(dim=1), conv_bn(16, 32, 3, 2), GlobalPool(),
                                  nn.Linear(32, dim), L2Normalize())
        self.classes = nn.Parameter(torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed)))
        self.normalize = L2Normalize()
        init_deterministic(self, seed)

    def forward(self, x):
        return 100.0 * self.body(x) @ self.normalize(self.classes).T


class CosineSimilarityHead(nn.Module):
    """``F.cosine_similarity`` of features [N, D] against class embeddings [K, D], times 10 (TorchScript
    writes it as Σ x·w / max(√(Σx²·Σw²), ε), the dynamo exporter as normalize, then product); with
    ``hold_statistics`` (set by ``gates.detached_gates``) the features' norm is computed detached."""

    def __init__(self, classes: int, dim: int, seed: int):
        super().__init__()
        self.classes = nn.Parameter(torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed)))
        self.hold_statistics = False

    def forward(self, x):
        if not self.hold_statistics:
            return 10.0 * nn.functional.cosine_similarity(x[:, None, :], self.classes[None], dim=-1)
        norms = x.detach().norm(dim=-1, keepdim=True) * self.classes.norm(dim=-1)
        return 10.0 * (x[:, None, :] * self.classes[None]).sum(-1) / norms


class CosineSimilarityLike(nn.Module):
    """CNN features scored by ``F.cosine_similarity`` against class embeddings."""

    input_shape = (3, 16, 16)

    def __init__(self, seed=0, num_classes=10, dim=16):
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 16, 3, 2), conv_bn(16, dim, 3, 2), GlobalPool())
        self.head = CosineSimilarityHead(num_classes, dim, seed)
        init_deterministic(self.body, seed)

    def forward(self, x):
        return self.head(self.body(x))


# ---- local response normalization: AlexNet as Caffe ordered it -----------------------------------------

class LocalResponseLike(nn.Module):
    """Conv-ReLU-LRN-pool twice (``nn.LocalResponseNorm``, which torch writes out: an average pool of x² over
    neighbouring channels, then x / (k + α·that)^β; sizes 5 and 4, whose window torch places otherwise than
    ONNX's LRN; the oracle holds the denominator), a Linear head."""

    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 12, 5, 2, 2), nn.ReLU(), nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0), nn.MaxPool2d(3, 2),
            nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(4, 1e-2, 0.75, 1.0), nn.MaxPool2d(3, 2))
        self.head = nn.Linear(16 * 9, num_classes)
        init_deterministic(self, seed)

    def forward(self, x):
        return self.head(torch.flatten(self.body(x), 1))


# ---- maxout: elementwise maxima (and a minimum) of linear pieces, a channel maxout by amax ----------------

class Extremum(nn.Module):
    """The elementwise maximum (``torch.maximum``, ONNX Max) or minimum of linear pieces: Goodfellow's maxout."""

    def __init__(self, *pieces, reduce=torch.maximum):
        super().__init__()
        self.pieces, self.reduce = nn.ModuleList(pieces), reduce

    def forward(self, x):
        out = self.pieces[0](x)
        for piece in self.pieces[1:]:
            out = self.reduce(out, piece(x))
        return out


class ChannelMaxout(nn.Module):
    """A Conv with ``pieces`` times the channels, maxed over each group of ``pieces`` (ReduceMax)."""

    def __init__(self, cin, cout, pieces=2):
        super().__init__()
        self.conv, self.pieces = nn.Conv2d(cin, cout * pieces, 3, 1, 1), pieces

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        return y.view(n, c // self.pieces, self.pieces, h, w).amax(2)


class MaxoutLike(nn.Module):
    """A maxout network: a two-piece maxout of Conv-BN pairs, a channel maxout, a two-piece minimum of
    strided Convs, and a three-piece maxout of Linears before the classifier."""

    input_shape = (3, 32, 32)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(3, 16, 3, 2), Extremum(conv_bn(16, 16, act=None), conv_bn(16, 16, act=None)),
            ChannelMaxout(16, 16), Extremum(nn.Conv2d(16, 24, 3, 2, 1), nn.Conv2d(16, 24, 3, 2, 1), reduce=torch.minimum),
            GlobalPool(), Extremum(*(nn.Linear(24, 32) for _ in range(3))), nn.Linear(32, num_classes))
        init_deterministic(self, seed)

    def forward(self, x):
        return self.body(x)


# ---- padding modes: convolutions padded by reflection, replication and wrapping -------------------------

class PaddingModesLike(nn.Module):
    """Conv2d with ``padding_mode`` "reflect", "replicate" and "circular" (Pad reflect/edge; circular as
    Slices and Concat from TorchScript, Pad wrap from dynamo), an asymmetric ``ReflectionPad2d`` before a
    strided Conv, a ``ReplicationPad2d`` before the pooling."""

    input_shape = (3, 16, 16)

    def __init__(self, seed=0, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, padding_mode="replicate"), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, padding_mode="circular"), nn.ReLU(),
            nn.ReflectionPad2d((1, 2, 0, 3)), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.ReplicationPad2d(2),
            GlobalPool(), nn.Linear(8, num_classes))
        init_deterministic(self, seed)

    def forward(self, x):
        return self.body(x)


FAMILIES: dict[str, ModelSpec] = {
    "densenet_like": ModelSpec(DenseNetLike, DenseNetLike.input_shape),
    "mobilenet_like": ModelSpec(MobileNetLike, MobileNetLike.input_shape),
    "efficientnet_like": ModelSpec(EfficientNetLike, EfficientNetLike.input_shape),
    "inception_like": ModelSpec(InceptionLike, InceptionLike.input_shape),
    "squeezenet_like": ModelSpec(SqueezeNetLike, SqueezeNetLike.input_shape),
    "vgg_bn_gelu": ModelSpec(VGGBNGelu, VGGBNGelu.input_shape),
    "senet_like": ModelSpec(SENetLike, SENetLike.input_shape),
    "attention_like": ModelSpec(AttentionLike, AttentionLike.input_shape),
    "vit_like": ModelSpec(ViTLike, ViTLike.input_shape),
    "groupnorm_like": ModelSpec(GroupNormLike, GroupNormLike.input_shape),
    "rmsnorm_like": ModelSpec(RMSNormLike, RMSNormLike.input_shape),
    "vit_einsum_like": ModelSpec(EinsumViTLike, EinsumViTLike.input_shape),
    "vit_sdpa_like": ModelSpec(SdpaViTLike, SdpaViTLike.input_shape),
    "resnext_like": ModelSpec(ResNeXtLike, ResNeXtLike.input_shape),
    "shufflenet_like": ModelSpec(ShuffleNetLike, ShuffleNetLike.input_shape),
    "fasternet_like": ModelSpec(FasterNetLike, FasterNetLike.input_shape),
    "convnext_like": ModelSpec(ConvNeXtLike, ConvNeXtLike.input_shape),
    "convnextv2_like": ModelSpec(ConvNeXtV2Like, ConvNeXtV2Like.input_shape),
    "swin_like": ModelSpec(SwinLike, SwinLike.input_shape),
    "fastai_like": ModelSpec(FastaiLike, FastaiLike.input_shape),
    "cosine_like": ModelSpec(CosineLike, CosineLike.input_shape),
    "cosine_similarity_like": ModelSpec(CosineSimilarityLike, CosineSimilarityLike.input_shape),
    "maxout_like": ModelSpec(MaxoutLike, MaxoutLike.input_shape),
    "local_response_like": ModelSpec(LocalResponseLike, LocalResponseLike.input_shape),
    "padding_modes_like": ModelSpec(PaddingModesLike, PaddingModesLike.input_shape),
}


def make_family(name: str, seed: int = 0) -> nn.Module:
    return FAMILIES[name].factory(seed=seed).eval()


def family_input(name: str, batch: int = 2, seed: int = 0) -> np.ndarray:
    shape = (batch, *FAMILIES[name].input_shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
