"""The models of kdq: a registry of architectures with their layer taps, and the truncated forward.

    from kdq.models import build_model, TAPS, truncated
    model = build_model("vgg_tiny", num_classes=8)
    tap = TAPS["vgg_tiny"]["conv"]            # Tap(node=..., weight=...)
    feature = truncated(model, tap)(images)   # pre-activation, layers above never run

This module itself imports neither torch nor torchvision: the layer names and the registry's architecture names
are here, so that a script's ``--help`` stays fast; everything else is loaded from :mod:`kdq.models.registry` and
:mod:`kdq.models.taps` when it is first used.
"""
from __future__ import annotations

import importlib

LAYERS: tuple[str, ...] = ("conv", "fc1", "fc2", "fc3")  # the rows of weight_diff.npy (docs/method.md §1)
# the registry's names (tests/test_models.py checks them against kdq.models.registry.MODELS)
ARCH_NAMES: tuple[str, ...] = ("alexnet", "vgg11", "vgg16", "vgg16_bn", "vgg19", "resnet18", "resnet50", "resnet101",
                               "resnet152", "vgg_tiny", "vgg_tiny_bn", "resnet_tiny")

_LAZY = {
    "registry": ("ARCHS", "MODELS", "TAPS", "ArchInfo", "UnknownArch", "arch_info", "build_model", "check_pretrained",
                 "feature_fn", "load_pretrained"),
    "taps": ("Tap", "Truncated", "analysed_weight", "modules_up_to", "params_up_to", "state_keys_up_to", "truncated"),
}
_OWNER = {name: module for module, names in _LAZY.items() for name in names}
__all__ = ["ARCH_NAMES", "LAYERS", *_OWNER]


def __getattr__(name: str):
    if name in _OWNER:
        value = getattr(importlib.import_module(f"kdq.models.{_OWNER[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kdq.models' has no attribute {name!r}")
