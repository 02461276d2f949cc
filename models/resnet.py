"""ResNets with the paper's head.

``layer4 → [conv3x3-BN-ReLU]×2 → avgpool → Linear-ReLU-Dropout ×2 → Linear``.  The torchvision
backbone stays under ``net.*``, the extra 2-conv block is ``features.0..5`` and the head is
``net.fc.0..6`` (docs/method.md §0), so checkpoints of the original code load.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from kdq.models.init import classifier_head, disable_inplace, init_weights
from kdq.models.taps import Tap

RESNET_TAPS = {
    "conv": Tap("features.4", "features.3.weight"),
    "fc1": Tap("net.fc.0", "net.fc.0.weight"),
    "fc2": Tap("net.fc.3", "net.fc.3.weight"),
    "fc3": Tap("net.fc.6", "net.fc.6.weight"),
}


def extra_block(channels: int) -> nn.Sequential:
    """Conv-BN-ReLU-Conv-BN-ReLU on top of ``layer4`` (indices 0..5)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
    )


class ResNetKD(nn.Module):
    """A ResNet backbone (``net``: conv1, bn1, relu, maxpool, layer1-4, avgpool, fc) with the paper's
    extra block (``features``) and 3-layer head (``net.fc``)."""

    def __init__(self, net: nn.Module, channels: int, hidden: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.net = net
        self.net.fc = classifier_head(channels, hidden, num_classes, dropout)
        self.features = extra_block(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        x = self.features(x)
        return n.fc(torch.flatten(n.avgpool(x), 1))


def build_torchvision_resnet(arch: str, num_classes: int, hidden: int, dropout: float = 0.5) -> ResNetKD:
    """torchvision's ``arch`` with the paper's extra block and head of width ``hidden`` (4096 for resnet18,
    2048 for resnet50/101/152, as the original code)."""
    net = getattr(tvm, arch)(weights=None)
    channels = net.fc.in_features
    model = ResNetKD(net, channels, hidden, num_classes, dropout)
    init_weights(model)
    return disable_inplace(model)


class TinyBackbone(nn.Module):
    """A small ResNet with torchvision's attribute names; widths chosen for 64 px inputs on a CPU."""

    def __init__(self, widths=(16, 32, 64, 64), strides=(1, 2, 2, 1)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        c = widths[0]
        for i, (w, s) in enumerate(zip(widths, strides), start=1):
            down = None
            if s != 1 or c != w:
                down = nn.Sequential(nn.Conv2d(c, w, 1, stride=s, bias=False), nn.BatchNorm2d(w))
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(c, w, stride=s, downsample=down)))
            c = w
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.out_channels = c


def build_resnet_tiny(num_classes: int, dropout: float = 0.5) -> ResNetKD:
    backbone = TinyBackbone()
    model = ResNetKD(backbone, backbone.out_channels, 128, num_classes, dropout)
    init_weights(model, linear_std=None)
    return disable_inplace(model)
