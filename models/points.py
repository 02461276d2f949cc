"""CPU-sized nets for point clouds: ``pointnet_tiny`` and ``dgcnn_tiny``.

Input: a FloatTensor of coordinates ``(B, P, 3)``; both nets take any number of points P and give the same logits
for any order of the points (a max over points; DGCNN's k-NN graph is built from the points, not their order).  The
σ fit's noise goes on the coordinates themselves (no injection module).

Taps (pre-activation, each the output of a module followed by a ReLU), ``conv`` is per point, ``(B, 128, P)``:
PointNet ``features.4`` (the shared MLP's last Conv1d), DGCNN ``fuse`` (the Conv1d over both EdgeConvs' outputs);
``fc1`` / ``fc2`` / ``fc3`` = ``classifier.0`` / ``.3`` / ``.6``, the head of kdq's tiny VGG.
"""
from __future__ import annotations

import torch
from torch import nn

from kdq.models.init import classifier_head, disable_inplace, init_weights
from kdq.models.taps import Tap

POINT_WIDTH = 128  # the width of the conv tap and of the head's hidden layers
NEIGHBOURS = 8  # DGCNN's k

_HEAD_TAPS = {layer: Tap(f"classifier.{i}", f"classifier.{i}.weight") for layer, i in (("fc1", 0), ("fc2", 3),
                                                                                       ("fc3", 6))}
POINTNET_TAPS: dict[str, Tap] = {"conv": Tap("features.4", "features.4.weight"), **_HEAD_TAPS}
DGCNN_TAPS: dict[str, Tap] = {"conv": Tap("fuse", "fuse.weight"), **_HEAD_TAPS}


def check_points(points: torch.Tensor) -> None:
    """A ValueError unless ``points`` is a floating ``(B, P, 3)`` tensor."""
    if points.dim() != 3 or points.shape[-1] != 3 or not points.is_floating_point():
        raise ValueError(f"a point-cloud net takes float coordinates of shape (B, P, 3), not {tuple(points.shape)} "
                         f"{points.dtype}")


class TinyPointNet(nn.Module):
    """A shared per-point MLP 3→32→64→128 (Conv1d, k = 1, ReLU after each) → max over points → classifier."""

    def __init__(self, num_classes: int, dropout: float):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(3, 32, 1), nn.ReLU(), nn.Conv1d(32, 64, 1), nn.ReLU(),
                                      nn.Conv1d(64, POINT_WIDTH, 1), nn.ReLU())
        self.classifier = classifier_head(POINT_WIDTH, POINT_WIDTH, num_classes, dropout)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        check_points(points)
        x = self.features(points.transpose(1, 2))  # (B, 128, P)
        return self.classifier(x.amax(2))


def nearest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The indices ``(B, P, k)`` of each point's k nearest points by Euclidean distance in ``x`` ``(B, P, C)``, the
    point itself included (distance 0), nearest first.  The squared distances are summed coordinate by coordinate,
    not through a matrix product, so that a permutation of the points permutes them exactly."""
    with torch.no_grad():
        distances = (x.unsqueeze(2) - x.unsqueeze(1)).square().sum(-1)  # (B, P, P)
        return distances.topk(min(k, x.shape[1]), dim=-1, largest=False).indices


class EdgeConv(nn.Module):
    """DGCNN's edge convolution: for each point i and each of its k nearest points j (in the input's own space),
    the edge feature ``[x_i, x_j − x_i]`` → a shared Linear → ReLU, then the max over the k edges."""

    def __init__(self, in_channels: int, out_channels: int, k: int = NEIGHBOURS):
        super().__init__()
        self.k = k
        self.edge = nn.Linear(2 * in_channels, out_channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, P, C)`` → ``(B, P, out)``."""
        index = nearest(x, self.k)  # (B, P, k)
        neighbours = x[torch.arange(x.shape[0], device=x.device)[:, None, None], index]  # (B, P, k, C)
        centre = x.unsqueeze(2).expand_as(neighbours)
        return self.act(self.edge(torch.cat([centre, neighbours - centre], dim=-1))).amax(2)


class TinyDGCNN(nn.Module):
    """EdgeConv 3→32 (graph on the coordinates) → EdgeConv 32→32 (graph on the features) → ``fuse``, a per-point
    Conv1d over both (64→128) → ReLU → max over points → classifier."""

    def __init__(self, num_classes: int, dropout: float, k: int = NEIGHBOURS):
        super().__init__()
        self.edge1 = EdgeConv(3, 32, k)
        self.edge2 = EdgeConv(32, 32, k)
        self.fuse = nn.Conv1d(64, POINT_WIDTH, 1)
        self.act = nn.ReLU()
        self.classifier = classifier_head(POINT_WIDTH, POINT_WIDTH, num_classes, dropout)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        check_points(points)
        x1 = self.edge1(points)
        x2 = self.edge2(x1)
        x = self.act(self.fuse(torch.cat([x1, x2], dim=-1).transpose(1, 2)))  # (B, 128, P)
        return self.classifier(x.amax(2))


def _finish(model: nn.Module) -> nn.Module:
    """kdq's initialisation of the CPU-sized nets (linear N(0, 1/fan_in), zero bias; the Conv1d layers keep
    PyTorch's: ``init_weights`` sets Conv2d only), out-of-place ReLUs."""
    init_weights(model, linear_std=None)
    return disable_inplace(model)


def build_pointnet_tiny(num_classes: int, dropout: float = 0.5) -> TinyPointNet:
    """PointNet without the input transforms or BatchNorm: shared MLP 3→32→64→128, max-pool, the tiny VGG's head."""
    return _finish(TinyPointNet(num_classes, dropout))


def build_dgcnn_tiny(num_classes: int, dropout: float = 0.5) -> TinyDGCNN:
    """DGCNN with two EdgeConvs (k = 8, no BatchNorm), a 64→128 per-point Conv1d, max-pool, the tiny VGG's head."""
    return _finish(TinyDGCNN(num_classes, dropout))
