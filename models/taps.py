"""Layer taps: which submodule a layer name reads, and which weight is analysed there.

A tap is data.  ``Tap(node="net.classifier.0", weight="net.classifier.0.weight")`` says that the
layer's *pre-activation* output is the output of module ``net.classifier.0`` and that the weight
whose path length is recorded during training is ``net.classifier.0.weight``.

:func:`truncated` builds a module that runs the model only up to the tap and returns that pre-activation
tensor.  When the tap names a submodule (every registry tap does), a forward hook captures the submodule's
output and stops the model's forward right there, so it works for any model, also one with data-dependent
control flow after the tap; a tap on a graph node that is not a submodule (a functional ``add``, say) is
extracted with torch.fx (``create_feature_extractor``), which needs a traceable forward.  :func:`tap_method`
is the one check of a tap's name, for the API and the stages alike: a submodule, a graph node, or a ValueError
naming the closest of both.  The parameters and buffers the truncated forward uses — "the layers up to and
including the layer" — are those the tap's output depends on (:func:`params_up_to`, :func:`state_keys_up_to`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
import torch.fx
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
    model's own (shared), all of them — :func:`params_up_to` names those the output depends on.  ``call(model, x)``
    runs the model (default ``model(x)``; e.g. ``lambda m, ids: m(ids, attention_mask=...)``).
    """

    def __init__(self, model: nn.Module, node: str, call=None):
        super().__init__()
        self.model = model
        self.node = node
        self.target = model.get_submodule(node)
        self.call = call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(module, inputs, output):
            captured.append(output)
            raise _Stop

        handle = self.target.register_forward_hook(hook)
        try:
            self.model(x) if self.call is None else self.call(self.model, x)
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


class TapNotFound(ValueError):
    """A tap that names neither a submodule nor a torch.fx graph node of the model (one line, closest names)."""


def graph_node_names(model: nn.Module) -> list[str]:
    """The torch.fx graph nodes a tap may name (``layer4.0.add``, ``flatten``, ...): those of both the train and
    the eval graph, as ``create_feature_extractor`` needs, in the eval graph's order; whatever torch.fx raises for
    a model it cannot trace.  Tracing runs no tensor op, so a model on the meta device works."""
    from torchvision.models.feature_extraction import get_graph_node_names

    train, evaluation = get_graph_node_names(model)
    in_train = set(train)
    return [name for name in evaluation if name in in_train]


def _closest(name: str, names) -> str:
    """`` (closest: 'a', 'b')`` — the names nearest ``name`` by :func:`difflib.get_close_matches`, or ``""``."""
    near = difflib.get_close_matches(name, list(dict.fromkeys(names)), n=3, cutoff=0.6)
    return f" (closest: {', '.join(map(repr, near))})" if near else ""


def tap_method(model: nn.Module, node: str, owner: str = "model") -> str:
    """How a tap at ``node`` reads ``model``: ``"hook"`` when ``node`` is a submodule (the default path; any
    forward works), ``"fx"`` when it is a torch.fx graph node and not a submodule (a functional ``add``, say: the
    forward must be traceable).  A name that is neither is a :class:`TapNotFound` (a ValueError) naming
    ``owner`` and the closest submodules and graph nodes — the one check of a tap's name, for the API and the
    stages alike."""
    if is_submodule(model, node):
        return "hook"
    modules = [name for name, _ in model.named_modules() if name]
    try:
        nodes = graph_node_names(model)
    except Exception as exc:  # noqa: BLE001 - any failure of torch.fx to trace the model's forward
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TapNotFound(f"{owner} has no submodule {node!r}{_closest(node, modules)}, and torch.fx cannot trace "
                          f"it to look for a graph node ({reason})") from None
    if node in nodes:
        return "fx"
    raise TapNotFound(f"{owner} has no submodule or graph node {node!r}{_closest(node, [*modules, *nodes])}")


def truncated(model: nn.Module, tap: Tap, method: str = "auto") -> nn.Module:
    """A module computing the pre-activation output at ``tap``; nothing above it is run.

    ``method``: ``hook`` (the tap must name a submodule), ``fx`` (torch.fx; the forward must be traceable, e.g.
    for ``torch.compile`` of the result) or ``auto`` (hook for a submodule, fx otherwise); a name that is neither
    is a :class:`TapNotFound` (:func:`tap_method`).
    """
    if method == "auto":
        method = "hook" if is_submodule(model, tap.node) else "fx"
    if method == "hook":
        if not is_submodule(model, tap.node):
            raise KeyError(f"model has no submodule {tap.node!r}")
        return Truncated(model, tap.node)
    from torchvision.models.feature_extraction import create_feature_extractor

    try:
        extractor = create_feature_extractor(model, return_nodes={tap.node: "feature"})
    except Exception:
        tap_method(model, tap.node)  # a name that is neither: the one-line error naming the closest
        raise
    return _Unwrap(extractor)


def suggested_weight(model: nn.Module, node: str) -> str | None:
    """The weight a tap at ``node`` most likely analyses, for an error message: that of the first ``nn.Conv*d``
    or ``nn.Linear`` met walking back from ``node`` along each op's first input in the torch.fx graph (for a
    residual ``add`` of torchvision's or timm's ResNets, the block's last conv); None where there is none or the
    model cannot be traced."""
    try:
        extractor = truncated(model, Tap(node, ""), "fx")
    except Exception:  # noqa: BLE001 - untraceable or unknown: no suggestion
        return None
    graph = extractor.extractor.graph
    output = next(n for n in graph.nodes if n.op == "output")
    current = next(iter(output.args[0].values()))
    while isinstance(current, torch.fx.Node) and current.op != "placeholder":
        if current.op == "call_module":
            module = extractor.extractor.get_submodule(current.target)
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and isinstance(module.weight, nn.Parameter):
                return f"{current.target}.weight"
        current = current.args[0] if current.args else None
    return None


def analysed_weight(model: nn.Module, tap: Tap) -> nn.Parameter:
    """The parameter named by ``tap.weight`` (raises KeyError with the name if absent)."""
    params = dict(model.named_parameters())
    if tap.weight not in params:
        raise KeyError(f"model has no parameter {tap.weight!r}")
    return params[tap.weight]


def _probe(model: nn.Module, size: int, example: torch.Tensor | None = None) -> torch.Tensor:
    """The input the functions below run ``model`` on, on the model's device: ``example`` when given (token ids or
    point clouds: :meth:`ArchInfo.example_input <kdq.models.registry.ArchInfo.example_input>`), else two seeded
    ``size``-px images."""
    device = next(iter(model.parameters()), torch.zeros(())).device
    if example is not None:
        return example.to(device)
    return torch.randn(2, 3, size, size, device=device, generator=torch.Generator(device=device).manual_seed(0))


def params_up_to(model: nn.Module, tap: Tap, size: int = 64, example: torch.Tensor | None = None) -> list[str]:
    """Names (in ``model``'s namespace) of the parameters the output at ``tap`` depends on (a gradient reaches
    them from it), in the model's order; found in eval mode on ``example`` (a probe batch of the model's input), by
    default on two ``size``-px images."""
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
                out = truncated(model, tap)(_probe(model, size, example))
                grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
            finally:
                for p, flag in zip(params, flags):
                    p.requires_grad_(flag)
    finally:
        model.train(was_training)
    return [n for n, g in zip(names, grads) if g is not None]


def modules_up_to(model: nn.Module, tap: Tap, size: int = 64, example: torch.Tensor | None = None) -> list[str]:
    """Names of the submodules that finish their forward before the tap's output exists (the tap included), on
    ``example`` (default: two ``size``-px images)."""
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
            truncated(model, tap)(_probe(model, size, example))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return done


def state_keys_up_to(model: nn.Module, tap: Tap, size: int = 64, example: torch.Tensor | None = None) -> list[str]:
    """``state_dict`` keys of ``model`` the truncated forward at ``tap`` uses: the parameters its output depends
    on and the buffers (BatchNorm statistics) of the modules that ran before it — the weights a later stage must
    load to run the model up to the layer; found on ``example`` (default: two ``size``-px images)."""
    params = set(params_up_to(model, tap, size, example))
    ran = set(modules_up_to(model, tap, size, example))
    all_params = {name for name, _ in model.named_parameters()}
    keys = []
    for key in model.state_dict(keep_vars=True):
        owner = key.rsplit(".", 1)[0] if "." in key else ""
        if key in params or (owner in ran and key not in all_params):
            keys.append(key)
    return keys
