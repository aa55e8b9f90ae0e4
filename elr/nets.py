"""The networks of the paper: CIFAR ResNet v1 with and without shortcuts, ResNet101 v1, BN-ReLU MLPs.

One class per family plus factories (``resnet110(shortcut=False)``). Every
convolution is bias-free and followed by BatchNorm, so every convolution is
scale-invariant; the final linear layer is not (it feeds no normalisation)
and is excluded from ELR statistics by :func:`scale_invariant_layers`.
BatchNorm affine parameters are off by default, as in the paper (Sec. 4.1.1).

Expected parameter counts (asserted in ``tests/test_nets.py``):

==========================================  =============  =================
model                                       affine BN off  affine BN on
==========================================  =============  =================
``resnet20()`` (CIFAR-10)                   268,346        269,722
``resnet56()`` (CIFAR-10)                   848,954        853,018
``resnet110()`` (CIFAR-10)                  1,719,866      1,727,962
``resnet101(num_classes=1000)``             44,443,816     44,549,160
==========================================  =============  =================

With BN affine on, the CIFAR counts are those published for the reference
CIFAR ResNet implementations, and ResNet101 matches torchvision's.
Shortcuts of option A have no parameters, so ``shortcut=False`` does not
change the CIFAR counts.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _bn2d(channels: int, affine: bool, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=affine, eps=eps)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ option-A shortcut) - ReLU: the CIFAR ResNet v1 block."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: bool, bn_affine: bool, bn_eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn2d(planes, bn_affine, bn_eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn2d(planes, bn_affine, bn_eps)
        self.shortcut = shortcut
        self.stride, self.pad = stride, planes - in_planes

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            # option A: subsample and zero-pad the channels; no parameters
            skip = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
            if self.pad:
                skip = F.pad(skip, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            out = out + skip
        return F.relu(out)


class CifarResNet(nn.Module):
    """ResNet v1 for 32x32 inputs, depth 6n+2, planes 16/32/64 (He et al., 2016; the paper's Table 2)."""

    def __init__(self, depth: int = 56, num_classes: int = 10, shortcut: bool = True, bn_affine: bool = False,
                 in_channels: int = 3, bn_eps: float = 1e-5):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n+2 >= 8 (20, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth, self.shortcut = depth, shortcut
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = _bn2d(16, bn_affine, bn_eps)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for k in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if k == 0 else 1, shortcut, bn_affine, bn_eps))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)

    def scale_invariant_layers(self) -> list[tuple[str, nn.Module]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, nn.Conv2d)]


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck, expansion 4, stride on the 3x3 (ResNet v1.5 placement, as torchvision)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: bool, bn_affine: bool, bn_eps: float):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = _bn2d(planes, bn_affine, bn_eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn2d(planes, bn_affine, bn_eps)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _bn2d(out, bn_affine, bn_eps)
        self.shortcut = shortcut
        self.downsample = None
        if shortcut and (stride != 1 or in_planes != out):
            # option B: 1x1 convolution + BN on the identity path
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False), _bn2d(out, bn_affine, bn_eps))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut:
            out = out + (self.downsample(x) if self.downsample is not None else x)
        return F.relu(out)


class ImageNetResNet(nn.Module):
    """ResNet v1 with bottleneck blocks for 224x224 inputs (the paper's Table 3: blocks 3-4-23-3 for ResNet101)."""

    def __init__(self, layers=(3, 4, 23, 3), num_classes: int = 1000, shortcut: bool = True,
                 bn_affine: bool = False, bn_eps: float = 1e-5):
        super().__init__()
        self.shortcut = shortcut
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = _bn2d(64, bn_affine, bn_eps)
        blocks, in_planes = [], 64
        for planes, n, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 2)):
            for k in range(n):
                blocks.append(Bottleneck(in_planes, planes, stride if k == 0 else 1, shortcut, bn_affine, bn_eps))
                in_planes = planes * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        out = self.blocks(out)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def scale_invariant_layers(self) -> list[tuple[str, nn.Module]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, nn.Conv2d)]


class _ResidualLinear(nn.Module):
    """ReLU(x + BN(W x)): the one-layer analogue of a ResNet block (W is followed by BN, so it auto-tunes)."""

    def __init__(self, width: int, bn_affine: bool, bn_eps: float):
        super().__init__()
        self.linear = nn.Linear(width, width, bias=False)
        self.bn = nn.BatchNorm1d(width, affine=bn_affine, eps=bn_eps)

    def forward(self, x):
        return torch.relu(x + self.bn(self.linear(x)))


class BNReLUNet(nn.Module):
    """A feed-forward net: depth x [Linear (no bias) - BatchNorm1d - ReLU], then a linear head.

    The setting of Eq. (6): at initialisation its gradient norms grow by α = √(π/(π−1)) per layer
    towards the input. ``shortcut=True`` adds an identity path around every layer after the first
    (``ReLU(x + BN(W x))``), the MLP counterpart of the paper's Short ResNets, which removes that excursion.

    ``head_norm=True`` puts a BatchNorm before the head, as a pre-activation ResNet ends in one. With
    shortcuts the identity path sums every layer's normalised output, so the features the head reads grow
    as √depth (about 10× at depth 105) and the logits start that much too large; the BatchNorm reads them
    at unit scale. Without shortcuts the last layer is already normalised, so it changes little there.
    """

    def __init__(self, depth: int = 20, width: int = 256, in_features: int = 64, num_classes: int = 10,
                 bn_affine: bool = False, bn_eps: float = 1e-5, shortcut: bool = False, head_norm: bool = False):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        layers, features = [], in_features
        for i in range(depth):
            if shortcut and i > 0:
                layers.append(_ResidualLinear(width, bn_affine, bn_eps))
            else:
                layers += [nn.Linear(features, width, bias=False), nn.BatchNorm1d(width, affine=bn_affine, eps=bn_eps),
                           nn.ReLU()]
            features = width
        self.body = nn.Sequential(*layers)
        self.head_norm = nn.BatchNorm1d(width, affine=bn_affine, eps=bn_eps) if head_norm else nn.Identity()
        self.head = nn.Linear(width, num_classes)
        for m in self.body.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.head_norm(self.body(x.flatten(1))))

    def scale_invariant_layers(self) -> list[tuple[str, nn.Module]]:
        return [(f"body.{name}", m) for name, m in self.body.named_modules() if isinstance(m, nn.Linear)]


def scale_invariant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers whose ELRs the paper tracks, lowest first.

    Models of this module say so themselves. For any other model: every
    convolution and linear layer without bias except the last linear layer
    (check the choice with ``elr.audit``).
    """
    if hasattr(model, "scale_invariant_layers"):
        return model.scale_invariant_layers()
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    last_linear = max((i for i, (_, m) in enumerate(found) if isinstance(m, nn.Linear)), default=None)
    return [(n, m) for i, (n, m) in enumerate(found) if m.bias is None and i != last_linear]


# ------------------------------------------------------------------- factories


def resnet(depth: int, **kwargs) -> CifarResNet:
    return CifarResNet(depth, **kwargs)


def resnet20(**kwargs) -> CifarResNet:
    return CifarResNet(20, **kwargs)


def resnet56(**kwargs) -> CifarResNet:
    return CifarResNet(56, **kwargs)


def resnet110(**kwargs) -> CifarResNet:
    return CifarResNet(110, **kwargs)


def resnet101(**kwargs) -> ImageNetResNet:
    return ImageNetResNet((3, 4, 23, 3), **kwargs)


def bnrelu(depth: int = 20, **kwargs) -> BNReLUNet:
    return BNReLUNet(depth, **kwargs)


def resmlp(depth: int = 20, **kwargs) -> BNReLUNet:
    """``bnrelu`` with an identity path around every layer after the first (the MLP's "Short")."""
    return BNReLUNet(depth, shortcut=True, **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20, "resnet56": resnet56, "resnet110": resnet110, "resnet101": resnet101,
    "bnrelu": bnrelu, "resmlp": resmlp,
}


def build(name: str, **kwargs) -> nn.Module:
    """A model by name: ``resnet20|resnet56|resnet110|resnet<6n+2>|resnet101|bnrelu<depth>|resmlp<depth>``."""
    if name in MODELS:
        return MODELS[name](**kwargs)
    if name.startswith("bnrelu") and name[6:].isdigit():
        return bnrelu(int(name[6:]), **kwargs)
    if name.startswith("resmlp") and name[6:].isdigit():
        return resmlp(int(name[6:]), **kwargs)
    if name.startswith("resnet") and name[6:].isdigit():
        return resnet(int(name[6:]), **kwargs)
    raise ValueError(f"unknown model {name!r}; use one of {', '.join(MODELS)}, resnet<6n+2>, bnrelu<depth> or resmlp<depth>")


def size_of(name: str, width: int = 64) -> tuple[int, int]:
    """(scale-invariant layers, parameters) of the model ``name`` in closed form, without building it.

    The parameter count leaves out the input layer and the classifier, which depend on the data
    (a lower bound, exact up to those): CIFAR ResNet of depth 6n+2: 96,768·n − 23,040 (the counts above
    minus 1,082); ``bnrelu``/``resmlp`` of depth d: (d − 1)·width². Raises ValueError as :func:`build` does.
    """
    if name == "resnet101":
        return 104, 44_443_816 - 2_049_000  # 1 stem conv, 3·33 block convs, 4 downsample convs; fc left out
    for family in ("bnrelu", "resmlp"):
        if name.startswith(family) and name[len(family):].isdigit():
            depth = int(name[len(family):])
            if depth < 1 or width < 1:
                raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
            return depth, (depth - 1) * width * width
    digits = {"resnet20": "20", "resnet56": "56", "resnet110": "110"}.get(name, name[6:])
    if name.startswith("resnet") and digits.isdigit():
        depth = int(digits)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n+2 >= 8 (20, 56, 110, ...), got {depth}")
        return depth - 1, 96_768 * ((depth - 2) // 6) - 23_040
    raise ValueError(f"unknown model {name!r}; use one of {', '.join(MODELS)}, resnet<6n+2>, bnrelu<depth> or resmlp<depth>")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
