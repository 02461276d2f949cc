"""Layer taps: which submodule a layer name reads, and which weight is analysed there.

A tap is data.  ``Tap(node="net.classifier.0", weight="net.classifier.0.weight")`` says that the
layer's *pre-activation* output is the output of module ``net.classifier.0`` and that the weight
whose path length is recorded during training is ``net.classifier.0.weight``.

:func:`truncated` builds a module that runs the model only up to the tap and returns that pre-activation
tensor.  When the tap names a submodule (every registry tap does), a forward hook captures the submodule's
output and stops the model's forward right there, so it works for any model, also one with data-dependent
control flow after the tap; a tap on a graph node that is not a submodule (a functional ``add``, say) is
extracted with torch.fx (``create_feature_extractor``), which needs a traceable forward.  The parameters and
buffers the truncated forward uses — "the layers up to and including the layer" — are those the tap's output
depends on (:func:`params_up_to`, :func:`state_keys_up_to`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn



@dataclass(frozen=True)
class Tap:
    node: str  # module path whose output is the pre-activation feature
    weight: str  # state_dict key of the analysed weight


class _Stop(Exception):
    """Raised by the tap's hook to leave the model's forward once the tapped output exists."""


class Truncated(nn.Module):
    """``model`` run up to the submodule ``node``: returns that submodule's output; nothing after it runs.

    The model is held as a submodule, so ``train()``/``eval()``/``to()`` reach it; its parameters are the
    model's own (shared), all of them — :func:`params_up_to` names those the output depends on.
    """

    def __init__(self, model: nn.Module, node: str):
        super().__init__()
        self.model = model
        self.node = node
        self.target = model.get_submodule(node)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(module, inputs, output):
            captured.append(output)
            raise _Stop

        handle = self.target.register_forward_hook(hook)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"the forward of the model never ran the tapped module {self.node!r}")
        return captured[0]


class _Unwrap(nn.Module):
    """Return the single tapped tensor of an FX feature extractor instead of a one-entry dict."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)["feature"]


def is_submodule(model: nn.Module, node: str) -> bool:
    try:
        model.get_submodule(node)
    except AttributeError:
        return False
    return True


def truncated(model: nn.Module, tap: Tap, method: str = "auto") -> nn.Module:
    """A module computing the pre-activation output at ``tap``; nothing above it is run.

    ``method``: ``hook`` (the tap must name a submodule), ``fx`` (torch.fx; the forward must be traceable, e.g.
    for ``torch.compile`` of the result) or ``auto`` (hook for a submodule, fx otherwise).
    """
    if method == "auto":
        method = "hook" if is_submodule(model, tap.node) else "fx"
    if method == "hook":
        if not is_submodule(model, tap.node):
            raise KeyError(f"model has no submodule {tap.node!r}")
        return Truncated(model, tap.node)
    from torchvision.models.feature_extraction import create_feature_extractor

    return _Unwrap(create_feature_extractor(model, return_nodes={tap.node: "feature"}))


def analysed_weight(model: nn.Module, tap: Tap) -> nn.Parameter:
    """The parameter named by ``tap.weight`` (raises KeyError with the name if absent)."""
    params = dict(model.named_parameters())
    if tap.weight not in params:
        raise KeyError(f"model has no parameter {tap.weight!r}")
    return params[tap.weight]


def _probe(model: nn.Module, size: int) -> torch.Tensor:
    device = next(iter(model.parameters()), torch.zeros(())).device
    return torch.randn(2, 3, size, size, device=device, generator=torch.Generator(device=device).manual_seed(0))


def params_up_to(model: nn.Module, tap: Tap, size: int = 64) -> list[str]:
    """Names (in ``model``'s namespace) of the parameters the output at ``tap`` depends on (a gradient reaches
    them from it), in the model's order; found on a probe batch of ``size``-px inputs in eval mode."""
    was_training = model.training
    model.eval()
    names, params = zip(*[(n, p) for n, p in model.named_parameters()]) if any(True for _ in model.parameters()) \
        else ((), ())
    try:
        with torch.enable_grad():
            flags = [p.requires_grad for p in params]
            for p in params:
                p.requires_grad_(True)
            try:
                out = truncated(model, tap)(_probe(model, size))
                grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
            finally:
                for p, flag in zip(params, flags):
                    p.requires_grad_(flag)
    finally:
        model.train(was_training)
    return [n for n, g in zip(names, grads) if g is not None]


def modules_up_to(model: nn.Module, tap: Tap, size: int = 64) -> list[str]:
    """Names of the submodules that finish their forward before the tap's output exists (the tap included)."""
    if not is_submodule(model, tap.node):  # an fx node: the modules the extractor keeps
        used = {id(m) for m in truncated(model, tap, "fx").modules()}
        return [n for n, m in model.named_modules() if id(m) in used]
    done: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: done.append(name))
               for name, m in model.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            truncated(model, tap)(_probe(model, size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return done


def state_keys_up_to(model: nn.Module, tap: Tap, size: int = 64) -> list[str]:
    """``state_dict`` keys of ``model`` the truncated forward at ``tap`` uses: the parameters its output depends
    on and the buffers (BatchNorm statistics) of the modules that ran before it — the weights a later stage must
    load to run the model up to the layer."""
    params = set(params_up_to(model, tap, size))
    ran = set(modules_up_to(model, tap, size))
    all_params = {name for name, _ in model.named_parameters()}
    keys = []
    for key in model.state_dict(keep_vars=True):
        owner = key.rsplit(".", 1)[0] if "." in key else ""
        if key in params or (owner in ran and key not in all_params):
            keys.append(key)
    return keys
