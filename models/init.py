"""Weight initialisation of docs/method.md §0 and the shared classifier head: conv kaiming-normal (fan_out, relu) with zero bias,
BatchNorm weight 1 / bias 0, linear N(0, 0.01) with zero bias."""
from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module, linear_std: float | None = 0.01) -> None:
    """Initialise every conv, BatchNorm and Linear inside ``module`` in place.

    ``linear_std=None`` uses N(0, 1/fan_in) for linear layers instead of the paper's N(0, 0.01): the
    CPU-sized nets use it, because with a narrow head N(0, 0.01) shrinks the signal ~100× per layer and
    the first epochs learn nothing.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            std = linear_std if linear_std is not None else m.in_features ** -0.5
            nn.init.normal_(m.weight, 0.0, std)
            nn.init.zeros_(m.bias)


def classifier_head(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Linear-ReLU-Dropout ×2 → Linear, indices 0..6 as torchvision's VGG classifier (and the paper's ResNet
    head, ``net.fc``)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def disable_inplace(module: nn.Module) -> nn.Module:
    """Make every ReLU out-of-place, so a tapped tensor is never overwritten by the next op."""
    for m in module.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return module
