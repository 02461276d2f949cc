"""Architectures outside the registry: any classification model of torchvision or timm, or a factory of your own.

* ``torchvision:<name>`` — ``torchvision.models.get_model(name, weights=None, num_classes=C)``: the head sized to
  the classes, fresh weights (a local ImageNet state dict can be given to ``train_net --pretrained``).
* ``timm:<name>`` — ``timm.create_model(name, pretrained=False, num_classes=C)`` (timm is an optional extra,
  ``pip install -e .[timm]``): fresh weights, never a download.
* ``package.module:factory`` — ``factory(num_classes=C)``, by keyword, from an importable module (on
  ``PYTHONPATH``), returning an ``nn.Module`` whose forward maps ``(N, 3, S, S)`` images to ``(N, C)`` logits; a
  factory whose signature takes no ``num_classes`` keyword is refused (a positional call could land on another
  parameter: timm's factories read ``factory(5)`` as ``pretrained=5`` and download).

The taps say which submodule's output — or which torch.fx graph node's, such as a residual block's ``add`` — each
layer reads and which weight's distance is recorded (``--taps conv=layer4.1.conv2,fc3=fc:fc.weight``); a submodule's
weight defaults to ``<module>.weight``, a graph node's must be named (``conv=layer4.0.add:layer4.0.conv2.weight``).
Without ``--taps`` the last ``nn.Conv2d`` is ``conv`` and the last ``nn.Linear`` is ``fc3``.  Layers without a tap
are not analysed (their ``weight_diff.npy`` rows are NaN).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from typing import Callable

import torch
from torch import nn

from kdq.models import LAYERS
from kdq.models.registry import ArchInfo, family_of
from kdq.models.taps import Tap, TapNotFound, suggested_weight, tap_method

TORCHVISION = "torchvision:"
TIMM = "timm:"
TIMM_MISSING = "timm is not installed: pip install timm (or, in a checkout, pip install -e .[timm])"
log = logging.getLogger(__name__)
DEFAULT_SIZE = 224


def is_external(arch: str) -> bool:
    """``torchvision:<name>``, ``timm:<name>`` or ``module:factory`` (a registry name has no colon)."""
    return ":" in arch


def parse_taps(text: str) -> dict[str, Tap]:
    """``conv=layer4.1.conv2,fc3=fc:fc.weight`` → ``{layer: Tap}``; the weight defaults to ``<module>.weight``."""
    taps: dict[str, Tap] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        layer, eq, rest = item.partition("=")
        layer = layer.strip()
        if not eq or not rest.strip():
            raise ValueError(f"{item!r} is not layer=module[:weight]")
        if layer not in LAYERS:
            raise ValueError(f"unknown layer {layer!r} (layers: {', '.join(LAYERS)})")
        if layer in taps:
            raise ValueError(f"layer {layer} is named twice")
        node, _, weight = rest.strip().partition(":")
        taps[layer] = Tap(node.strip(), weight.strip() or f"{node.strip()}.weight")
    if not taps:
        raise ValueError("no tap given")
    return taps


def taps_text(taps: dict[str, Tap]) -> str:
    """The ``--taps`` spelling of ``taps`` (what run.json records)."""
    return ",".join(f"{layer}={tap.node}:{tap.weight}" for layer, tap in taps.items())


def _builder(arch: str) -> Callable[..., nn.Module]:
    """``builder(num_classes=...)`` for the spec."""
    if arch.startswith(TORCHVISION):
        return _torchvision_builder(arch[len(TORCHVISION):])
    if arch.startswith(TIMM):
        return _timm_builder(arch[len(TIMM):])
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{arch!r} is neither torchvision:<name>, timm:<name> nor package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{module_name} has no callable {attr!r}")
    check_factory(arch, factory)
    accepts = factory_keywords(factory)

    def build(num_classes: int, **options) -> nn.Module:
        """``factory(num_classes=C)``, with the builder options the data fix (a text model's ``vocab_size`` and
        ``max_length``) that the factory takes by keyword."""
        taken = {k: v for k, v in options.items() if accepts is None or k in accepts}
        model = factory(num_classes=num_classes, **taken)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{arch} returned a {type(model).__name__}, not an nn.Module")
        return model

    return build


def factory_keywords(factory: Callable) -> set[str] | None:
    """The keyword arguments ``factory`` takes besides ``num_classes`` (None: any, it has ``**kwargs``)."""
    import inspect

    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "num_classes"}


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"torchvision has no classification model {name!r} (torchvision.models.list_models())")

    def build(num_classes: int) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    return build


def _timm_builder(name: str) -> Callable[..., nn.Module]:
    """timm's model ``name`` with fresh weights (``pretrained=False`` always: kdq never downloads)."""
    try:
        import timm
    except ImportError:
        raise ValueError(TIMM_MISSING) from None
    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"closest: {', '.join(near)}" if near else "timm.list_models() lists them"
        raise ValueError(f"timm has no model {name!r} ({hint})")

    def build(num_classes: int) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)

    return build


def check_factory(arch: str, factory: Callable) -> None:
    """A ValueError unless ``factory`` can be called as ``factory(num_classes=C)``: a ``num_classes`` parameter
    that may be given by keyword, or ``**kwargs`` (a callable without a signature Python can read passes)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if "num_classes" in params and params["num_classes"].kind in by_keyword:
        return
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    raise ValueError(f"{arch}: kdq calls the factory as factory(num_classes=C), but its signature {signature} has "
                     "no num_classes parameter; write it as def factory(num_classes): ...")


def default_taps(model: nn.Module) -> dict[str, Tap]:
    """``conv`` = the last ``nn.Conv2d``, ``fc3`` = the last ``nn.Linear`` (in the order the model lists them)."""
    taps = {}
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if convs:
        taps["conv"] = Tap(convs[-1], f"{convs[-1]}.weight")
    if linears:
        taps["fc3"] = Tap(linears[-1], f"{linears[-1]}.weight")
    return taps


class TapError(ValueError):
    """A tap that names nothing in the model; the message starts with the layer (the caller names the flag)."""


def check_tap(model: nn.Module, arch: str, layer: str, tap: Tap) -> Tap:
    """``tap`` checked against ``model``: a submodule or graph node (:func:`tap_method`) and a parameter as its
    weight, else a :class:`TapError`.  A graph node, or a submodule without a weight of its own, given without
    ``:WEIGHT`` takes the weight of the nearest conv or linear layer before it (:func:`suggested_weight`; logged,
    and recorded in the run's taps), or is refused when there is none."""
    try:
        method = tap_method(model, tap.node, arch)
    except TapNotFound as exc:
        raise TapError(f"{layer}: {exc}") from None
    params = [name for name, _ in model.named_parameters()]
    if tap.weight in params:
        return tap
    if tap.weight == f"{tap.node}.weight":  # the default: the tapped module's own weight, which it lacks
        what = "is a graph node, not a submodule" if method == "fx" else "has no weight of its own"
        suggestion = suggested_weight(model, tap.node)
        if suggestion is not None:
            log.info("%s: %s %s: its weight distance is %s's (the nearest conv or linear layer before it; name "
                     "another with %s=%s:WEIGHT)", layer, tap.node, what, suggestion, layer, tap.node)
            return Tap(tap.node, suggestion)
        raise TapError(f"{layer}: {tap.node} {what} and no conv or linear layer precedes it: name the weight whose "
                       f"distance is recorded, {layer}={tap.node}:<parameter>")
    near = difflib.get_close_matches(tap.weight, params, n=3, cutoff=0.6)
    raise TapError(f"{layer}: {arch} has no parameter {tap.weight!r}"
                   + (f" (closest: {', '.join(map(repr, near))})" if near else ""))


def external_arch(arch: str, taps: dict[str, Tap] | None = None, image_size: int | None = None) -> ArchInfo:
    """The :class:`ArchInfo` of a ``torchvision:``/``timm:``/``module:factory`` architecture; a ValueError for a
    model that cannot be built or a tap that names no submodule, graph node or parameter of it (:func:`check_tap`)."""
    builder = _builder(arch)
    with torch.device("meta"):  # inspect the model without allocating its weights
        try:
            probe = builder(num_classes=2)
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's factory: any failure is reported in one line
            raise ValueError(f"{arch} could not be built ({type(exc).__name__}: {exc})") from None
    chosen = dict(taps) if taps else default_taps(probe)
    if not chosen:
        raise ValueError(f"{arch} has no nn.Conv2d or nn.Linear to tap by default; pass --taps")
    chosen = {layer: check_tap(probe, arch, layer, tap) for layer, tap in chosen.items()}
    ordered = {layer: chosen[layer] for layer in LAYERS if layer in chosen}
    out = ordered.get("fc3")
    head = (f"{out.node}.",) if out is not None else ()
    size = image_size or DEFAULT_SIZE
    # the family (which picks λ and the other defaults) by the class of the model built
    return ArchInfo(family_of(probe), size, ordered, head, head, name=arch, builder=builder, pretrained_root="",
                    dropout=False)
