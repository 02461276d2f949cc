"""A user's own model for the tests: ``--arch tests.user_models:gated_net`` (the ``package.module:factory`` form).

Its forward takes a data-dependent branch (``if h.mean() > t``) after the ``conv`` tap and before ``fc1``:
torch.fx cannot trace it, so kdq must stop the forward with a hook, and the ``fc1`` tap lies past the branch.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class GatedNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, 2 * width, 3, padding=1))
        self.gate = nn.Conv2d(2 * width, 2 * width, 1)
        self.fc1 = nn.Linear(2 * width, 32)
        self.fc3 = nn.Linear(32, num_classes)

    def forward(self, x):
        h = F.relu(self.features(x))
        if h.mean() > 0.05:  # data-dependent control flow
            h = h + F.relu(self.gate(h))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc3(F.relu(self.fc1(h)))


def gated_net(num_classes: int) -> nn.Module:
    return GatedNet(num_classes)


class BagOfWords(nn.Module):
    """A user's text model: ids (B, L), 0 = padding → ``embed`` → per-token ``proj`` → ReLU → masked mean → ``head``."""

    def __init__(self, num_classes: int, vocab_size: int, max_length: int):
        super().__init__()
        self.max_length = max_length
        self.embed = nn.Embedding(vocab_size, 8, padding_idx=0)
        self.proj = nn.Linear(8, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, ids):
        mask = (ids != 0).unsqueeze(-1).float()
        h = F.relu(self.proj(self.embed(ids))) * mask
        return self.head(h.sum(1) / mask.sum(1).clamp(min=1))


def bag_of_words(num_classes: int, vocab_size: int = 8, max_length: int = 8) -> nn.Module:
    """The text model of ``--arch tests.user_models:bag_of_words``: its vocabulary and length come from the data."""
    return BagOfWords(num_classes, vocab_size, max_length)


class PointMLP(nn.Module):
    """A user's point-cloud model: (B, P, 3) → per-point ``mlp`` → ReLU → max over the points → ``head``."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.mlp = nn.Linear(3, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, points):
        return self.head(F.relu(self.mlp(points)).amax(1))


def point_mlp(num_classes: int) -> nn.Module:
    """The point model of ``--arch tests.user_models:point_mlp``."""
    return PointMLP(num_classes)
