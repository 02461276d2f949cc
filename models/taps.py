"""Layer taps: which graph node a layer name reads, and which weight is analysed there.

A tap is data.  ``Tap(node="net.classifier.0", weight="net.classifier.0.weight")`` says that the
layer's *pre-activation* output is the output of module ``net.classifier.0`` and that the weight
whose path length is recorded during training is ``net.classifier.0.weight``.

:func:`truncated` builds, with ``torchvision.models.feature_extraction``, a module that runs the
model only up to the tap and returns that pre-activation tensor.  Its parameters are the model's own
parameters (shared, not copied), and it holds only the modules the tap depends on, so
``truncated(model, tap).parameters()`` is exactly "the layers up to and including the layer".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

LAYERS: tuple[str, ...] = ("conv", "fc1", "fc2", "fc3")


@dataclass(frozen=True)
class Tap:
    node: str  # module path whose output is the pre-activation feature
    weight: str  # state_dict key of the analysed weight


def truncated(model: nn.Module, tap: Tap) -> nn.Module:
    """A module computing the pre-activation output at ``tap``; nothing above it is run.

    The returned GraphModule shares parameters with ``model`` and follows its train/eval mode only
    when its own ``train()``/``eval()`` is called (its submodules are the model's submodules).
    """
    extractor = create_feature_extractor(model, return_nodes={tap.node: "feature"})
    return _Unwrap(extractor)


class _Unwrap(nn.Module):
    """Return the single tapped tensor instead of a one-entry dict."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)["feature"]


def analysed_weight(model: nn.Module, tap: Tap) -> nn.Parameter:
    """The parameter named by ``tap.weight`` (raises KeyError with the name if absent)."""
    params = dict(model.named_parameters())
    if tap.weight not in params:
        raise KeyError(f"model has no parameter {tap.weight!r}")
    return params[tap.weight]


def state_keys_up_to(model: nn.Module, tap: Tap) -> list[str]:
    """``state_dict`` keys of ``model`` (parameters and buffers) that the truncated forward at ``tap`` uses:
    the weights a later stage must load to run the model up to the layer."""
    used = {id(t) for t in truncated(model, tap).state_dict(keep_vars=True).values()}
    return [k for k, t in model.state_dict(keep_vars=True).items() if id(t) in used]


def params_up_to(model: nn.Module, tap: Tap) -> list[str]:
    """Names (in ``model``'s namespace) of the parameters the truncated forward at ``tap`` uses."""
    keys = set(state_keys_up_to(model, tap))
    return [n for n, _ in model.named_parameters() if n in keys]
