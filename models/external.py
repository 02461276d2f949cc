"""Architectures outside the registry: any classification model of torchvision, or a factory of your own.

* ``torchvision:<name>`` — ``torchvision.models.get_model(name, weights=None, num_classes=C)``: the head sized to
  the classes, fresh weights (a local ImageNet state dict can be given to ``train_net --pretrained``).
* ``package.module:factory`` — ``factory(num_classes)`` from an importable module (on ``PYTHONPATH``), returning
  an ``nn.Module`` whose forward maps ``(N, 3, S, S)`` images to ``(N, C)`` logits.

The taps say which submodule's output each layer reads and which weight's distance is recorded
(``--taps conv=layer4.1.conv2,fc3=fc[:fc.weight]``); without ``--taps`` the last ``nn.Conv2d`` is ``conv`` and the
last ``nn.Linear`` is ``fc3``.  Layers without a tap are not analysed (their ``weight_diff.npy`` rows are NaN).
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import nn

from kdq.models import LAYERS
from kdq.models.registry import ArchInfo, family_of
from kdq.models.taps import Tap

TORCHVISION = "torchvision:"
DEFAULT_SIZE = 224


def is_external(arch: str) -> bool:
    """``torchvision:<name>`` or ``module:factory`` (a registry name has no colon)."""
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
        import torchvision

        name = arch[len(TORCHVISION):]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"torchvision has no classification model {name!r} (torchvision.models.list_models())")

        def build(num_classes: int) -> nn.Module:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

        return build
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{arch!r} is neither torchvision:<name> nor package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{module_name} has no callable {attr!r}")

    def build(num_classes: int) -> nn.Module:
        model = factory(num_classes)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{arch} returned a {type(model).__name__}, not an nn.Module")
        return model

    return build


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


def external_arch(arch: str, taps: dict[str, Tap] | None = None, image_size: int | None = None) -> ArchInfo:
    """The :class:`ArchInfo` of a ``torchvision:``/``module:factory`` architecture; a ValueError for a model
    that cannot be built or a tap that names no submodule or parameter of it."""
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
    params = dict(probe.named_parameters())
    modules = dict(probe.named_modules())
    for layer, tap in chosen.items():
        if tap.node not in modules:
            raise TapError(f"{layer}: {arch} has no submodule {tap.node!r}")
        if tap.weight not in params:
            raise TapError(f"{layer}: {arch} has no parameter {tap.weight!r}")
    ordered = {layer: chosen[layer] for layer in LAYERS if layer in chosen}
    out = ordered.get("fc3")
    head = (f"{out.node}.",) if out is not None else ()
    size = image_size or DEFAULT_SIZE
    # the family (which picks λ and the other defaults) by the class of the model built
    return ArchInfo(family_of(probe), size, ordered, head, head, name=arch, builder=builder, pretrained_root="",
                    dropout=False)
