"""VGG-style nets (and AlexNet): the torchvision model wrapped as ``net``.

State-dict keys are ``net.features.*`` / ``net.classifier.*`` as in the original code, so its
checkpoints load (a ``module.`` prefix is stripped by the checkpoint loader).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from kdq.models.init import classifier_head, disable_inplace, init_weights
from kdq.models.taps import Tap


class WrappedNet(nn.Module):
    """A torchvision classifier held as ``self.net``; ``forward`` returns logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def feature_layout(cfg: list, batch_norm: bool, pool_after_last: bool = True) -> list[str]:
    """Module kinds of a VGG ``features`` stack built from a torchvision-style cfg (ints = conv widths,
    "M" = max-pool), without building it: ["conv", "bn", "relu", "pool", ...]."""
    kinds: list[str] = []
    for v in cfg:
        kinds += ["pool"] if v == "M" else (["conv", "bn", "relu"] if batch_norm else ["conv", "relu"])
    return kinds


def vgg_taps(layout: list[str], classifier_linear: tuple[int, int, int]) -> dict[str, Tap]:
    """Taps for a ``net.features`` / ``net.classifier`` model whose features have ``layout``.

    ``conv`` reads the last conv (or its BatchNorm, for ``*_bn`` nets: the value right before the ReLU);
    ``fc1..fc3`` read the three Linear layers of the classifier at the given indices.
    """
    conv = max(i for i, kind in enumerate(layout) if kind == "conv")
    node = conv + 1 if layout[conv + 1] == "bn" else conv
    taps = {"conv": Tap(f"net.features.{node}", f"net.features.{conv}.weight")}
    for name, idx in zip(("fc1", "fc2", "fc3"), classifier_linear):
        taps[name] = Tap(f"net.classifier.{idx}", f"net.classifier.{idx}.weight")
    return taps


def build_torchvision_vgg(arch: str, num_classes: int, dropout: float = 0.5) -> WrappedNet:
    """``vgg11|vgg16|vgg16_bn|vgg19`` (classifier indices 0, 3, 6) or ``alexnet`` (1, 4, 6)."""
    net = getattr(tvm, arch)(weights=None, num_classes=num_classes, dropout=dropout)
    model = WrappedNet(net)
    init_weights(model)
    return disable_inplace(model)


TINY_WIDTHS = (16, 32, 64, 64)


def tiny_cfg(widths: tuple[int, ...] = TINY_WIDTHS) -> list:
    """The tiny VGG's features as a torchvision-style cfg: every conv followed by a max-pool."""
    return [x for w in widths for x in (w, "M")]


class TinyFeatures(nn.Sequential):
    """A VGG-like conv stack for small inputs: [conv-ReLU-maxpool] per width; the last conv is ``conv``."""

    def __init__(self, widths: tuple[int, ...], in_channels: int = 3, batch_norm: bool = False):
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers.append(nn.Conv2d(c, w, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(w))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        super().__init__(*layers)


class TinyVGG(nn.Module):
    """CPU-sized VGG with torchvision's attribute names (``features``, ``avgpool``, ``classifier``)."""

    def __init__(self, num_classes: int, widths=TINY_WIDTHS, pool: int = 4, hidden: int = 256,
                 dropout: float = 0.5, batch_norm: bool = False):
        super().__init__()
        self.features = TinyFeatures(widths, batch_norm=batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = classifier_head(widths[-1] * pool * pool, hidden, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build_vgg_tiny(num_classes: int, dropout: float = 0.5, batch_norm: bool = False) -> WrappedNet:
    model = WrappedNet(TinyVGG(num_classes, dropout=dropout, batch_norm=batch_norm))
    init_weights(model, linear_std=None)
    return disable_inplace(model)
