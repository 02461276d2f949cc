"""The models of kdq: a registry of architectures with their layer taps, and the truncated forward.

    from kdq.models import build_model, TAPS, truncated
    model = build_model("vgg_tiny", num_classes=8)
    tap = TAPS["vgg_tiny"]["conv"]            # Tap(node=..., weight=...)
    feature = truncated(model, tap)(images)   # pre-activation, layers above never run

Besides images, the registry holds CPU-sized nets for token sequences (``transformer_tiny``, ``bilstm_tiny``) and
point clouds (``pointnet_tiny``, ``dgcnn_tiny``): ``ARCH_MODALITY`` says which input each architecture takes.

This module itself imports neither torch nor torchvision: the layer names and the registry's architecture names
are here, so that a script's ``--help`` stays fast; everything else is loaded from :mod:`kdq.models.registry` and
:mod:`kdq.models.taps` when it is first used.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

LAYERS: tuple[str, ...] = ("conv", "fc1", "fc2", "fc3")  # the rows of weight_diff.npy (docs/method.md §1)


@dataclass(frozen=True)
class FamilyDefaults:
    """The method's defaults that depend on the architecture's family (docs/method.md §1–§3): the one place
    they are written.  :attr:`ArchInfo.defaults <kdq.models.registry.ArchInfo.defaults>` gives an
    architecture's; :func:`family_defaults` a family's by name."""

    lam: float  # λ of the σ fit (§2)
    finetune_lr: float  # the learning rate of distillation's phase 2 (§1)
    mhat_skip_epoch0: bool  # m̂ is never epoch 0: the original's rule for ResNets (§3)


FAMILIES: dict[str, FamilyDefaults] = {
    "vgg": FamilyDefaults(lam=7.0, finetune_lr=1e-3, mhat_skip_epoch0=False),
    "alexnet": FamilyDefaults(lam=7.0, finetune_lr=1e-3, mhat_skip_epoch0=False),
    "resnet": FamilyDefaults(lam=6.0, finetune_lr=1e-2, mhat_skip_epoch0=True),
    "other": FamilyDefaults(lam=7.0, finetune_lr=1e-3, mhat_skip_epoch0=False),
}


def family_defaults(family: str | None) -> FamilyDefaults:
    """The defaults of ``family`` (``"vgg"``, ``"alexnet"``, ``"resnet"``; any other name or None: ``"other"``)."""
    return FAMILIES.get(family or "other", FAMILIES["other"])


DEFAULT_MAX_LENGTH = 64  # the text nets' default max_length: the most tokens a sequence may hold
DEFAULT_POINTS = 128  # the point-cloud nets' default number of points per cloud (the nets take any number)

# The registry's architectures: name → (family, size, how the registry builds it).  The size is the input side S of
# an image net, the default max length of a text net and the default number of points of a point-cloud net.  The
# names are written here only, so that a script's --help lists them without importing torch; models/registry.py
# builds each by its kind.
ARCH_TABLE: dict[str, tuple[str, int, str]] = {
    "alexnet": ("alexnet", 227, "torchvision_alexnet"),
    **{name: ("vgg", 224, "torchvision_vgg") for name in ("vgg11", "vgg16", "vgg16_bn", "vgg19")},
    **{name: ("resnet", 224, "torchvision_resnet") for name in ("resnet18", "resnet50", "resnet101", "resnet152")},
    "vgg_tiny": ("vgg", 64, "vgg_tiny"),
    "vgg_tiny_bn": ("vgg", 64, "vgg_tiny"),
    "resnet_tiny": ("resnet", 64, "resnet_tiny"),
    "transformer_tiny": ("other", DEFAULT_MAX_LENGTH, "transformer_tiny"),
    "bilstm_tiny": ("other", DEFAULT_MAX_LENGTH, "bilstm_tiny"),
    "pointnet_tiny": ("other", DEFAULT_POINTS, "pointnet_tiny"),
    "dgcnn_tiny": ("other", DEFAULT_POINTS, "dgcnn_tiny"),
}
ARCH_NAMES: tuple[str, ...] = tuple(ARCH_TABLE)

MODALITIES: tuple[str, ...] = ("image", "text", "points")
# What each architecture takes: "image" (B, 3, S, S) floats, "text" (B, L) token ids (0 = padding) or "points"
# (B, P, 3) coordinates.
ARCH_MODALITY: dict[str, str] = {name: "image" for name in ARCH_NAMES} | {
    "transformer_tiny": "text", "bilstm_tiny": "text", "pointnet_tiny": "points", "dgcnn_tiny": "points"}

_LAZY = {
    "registry": ("ARCHS", "MODELS", "TAPS", "ArchInfo", "UnknownArch", "arch_info", "build_model", "check_pretrained",
                 "family_of", "feature_fn", "load_pretrained"),
    "taps": ("Tap", "TapNotFound", "Truncated", "analysed_weight", "graph_node_names", "modules_up_to", "params_up_to",
             "state_keys_up_to", "tap_method", "truncated"),
}
_OWNER = {name: module for module, names in _LAZY.items() for name in names}
__all__ = ["ARCH_MODALITY", "ARCH_NAMES", "ARCH_TABLE", "DEFAULT_MAX_LENGTH", "DEFAULT_POINTS", "FAMILIES",
           "FamilyDefaults", "LAYERS", "MODALITIES", "family_defaults", *_OWNER]
_SUBMODULES = ("external", "points", "registry", "taps", "text")


def __dir__() -> list[str]:
    """The public names (those loaded on first use included) and the submodules, so that they tab-complete."""
    return sorted({*__all__, *_SUBMODULES, *(name for name in globals() if name.startswith("__"))})


def __getattr__(name: str):
    if name in _OWNER:
        value = getattr(importlib.import_module(f"kdq.models.{_OWNER[name]}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:  # a subpackage not imported yet
        return importlib.import_module(f"kdq.models.{name}")
    raise AttributeError(f"module 'kdq.models' has no attribute {name!r}")
