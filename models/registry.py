"""The model registry (imported lazily through ``kdq.models``).

``MODELS`` maps an architecture name to its builder, ``ARCHS`` to what the stages need to know
about it (family, input size, layer taps), and :func:`build_model` is the one way in::

    model = build_model("vgg_tiny", num_classes=8)
    tap = TAPS["vgg_tiny"]["conv"]            # Tap(node=..., weight=...)
    feature = truncated(model, tap)(images)   # pre-activation, layers above never run
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from torchvision.models import vgg as tv_vgg

from kdq.models import ARCH_MODALITY, ARCH_NAMES, ARCH_TABLE, LAYERS, FamilyDefaults, family_defaults
from kdq.models.points import DGCNN_TAPS, POINTNET_TAPS, build_dgcnn_tiny, build_pointnet_tiny
from kdq.models.resnet import RESNET_TAPS, build_resnet_tiny, build_torchvision_resnet
from kdq.models.taps import Tap, truncated
from kdq.models.text import DEFAULT_VOCAB, EMBED, PAD, TEXT_TAPS, build_bilstm_tiny, build_transformer_tiny
from kdq.models.vgg import build_torchvision_vgg, build_vgg_tiny, feature_layout, tiny_cfg, vgg_taps


@dataclass(frozen=True)
class ArchInfo:
    """What the stages need to know of an architecture, and how to build it."""
    family: str  # "vgg", "alexnet", "resnet" or "other": picks the defaults (kdq.models.FAMILIES)
    input_size: int  # S, the side of the square input; text: the default max length L; points: the default P
    taps: dict[str, Tap]  # layer → tap, for the layers this architecture names (the registry: all four)
    head: tuple[str, ...]  # state_dict prefixes (of ``pretrained_root``) a pretrained backbone does not set
    output: tuple[str, ...]  # the prefixes still fresh with --keep-pretrained-head (the output layer)
    name: str = ""
    builder: Callable[..., nn.Module] | None = None  # builder(num_classes=..., [dropout=...]) → model
    pretrained_root: str = "net"  # the submodule a torchvision-format state dict is loaded into ("": the model)
    dropout: bool = True  # the builder takes a dropout argument
    modality: str = "image"  # what the net takes (kdq.models.MODALITIES): "image", "text" or "points"
    inject: str | None = None  # the submodule whose output the σ fit's noise replaces (None: the input itself)
    options: dict[str, Any] = field(default_factory=dict)  # builder options the data fixed (vocab_size, max_length)
    options: dict[str, Any] = field(default_factory=dict)  # builder keywords every build passes (a text net's
    # vocab_size and max_length, fixed by its training data); build(..., **options) adds to / overrides them

    @property
    def defaults(self) -> FamilyDefaults:
        """The method's defaults for this architecture's family: λ, the fine-tune lr, the m̂ rule."""
        return family_defaults(self.family)

    @property
    def train_resize(self) -> int:
        """The side of the square the training transform resizes to before its random crop of S: 256 for the
        paper's 224 and 227 px (as the original code), scaled as 256/224 for other sizes."""
        return 256 if self.input_size in (224, 227) else round(self.input_size * 256 / 224)

    def build(self, num_classes: int, pretrained: dict[str, Any] | None = None, dropout: float | None = None,
              keep_head: bool = False, **options: Any) -> nn.Module:
        """A new model with fresh weights (seed torch before calling); see :func:`load_pretrained`.  The entry's
        :attr:`options` and ``options`` (which win) go to the builder by keyword (the text nets' ``vocab_size`` and
        ``max_length``); one it does not take is a ValueError naming those it does."""
        kwargs = {} if dropout is None else {"dropout": dropout}
        if kwargs and not self.dropout:
            raise ValueError(f"{self.name} takes no dropout setting")
        options = {**self.options, **options}
        options = {**self.options, **options}
        self.check_options(options)
        model = self.builder(num_classes=num_classes, **kwargs, **options)
        if pretrained is not None:
            load_pretrained(model, self, pretrained, keep_head=keep_head)
        return model

    def check_options(self, options: dict[str, Any]) -> None:
        """A ValueError for a builder option (beyond ``num_classes`` and ``dropout``) the builder does not take; the
        registry's own settings of a builder (``partial``'s keywords: ``batch_norm``, ``hidden``) are none."""
        fixed = {"num_classes", "dropout", *(getattr(self.builder, "keywords", None) or {})}
        params = inspect.signature(self.builder).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return  # a module:factory builder: it passes on the options its factory takes
        taken = [name for name in params if name not in fixed]
        unknown = sorted(set(options) - set(taken))
        if unknown:
            known = ", ".join(taken) if taken else "none"
            raise ValueError(f"{self.name or 'this architecture'} takes no option {', '.join(unknown)} "
                             f"(its options: {known})")

    def example_input(self, batch: int = 2, device: torch.device | str | None = None,
                      vocab_size: int = DEFAULT_VOCAB) -> torch.Tensor:
        """A seeded probe batch of this architecture's input (the same values on every call): images
        ``(batch, 3, S, S)``; token ids ``(batch, L)``, L the default max length, drawn from ``1..vocab_size-1``,
        the first row full and the others ending in padding (at most half of L); points ``(batch, P, 3)``."""
        generator = torch.Generator(device=device or "cpu").manual_seed(0)
        size = self.input_size
        if self.modality == "text":
            ids = torch.randint(PAD + 1, vocab_size, (batch, size), device=device, generator=generator)
            lengths = size - (torch.arange(batch, device=device) * size) // (2 * batch)
            return ids.masked_fill(torch.arange(size, device=device) >= lengths.unsqueeze(1), PAD)
        if self.modality == "points":
            return torch.randn(batch, size, 3, device=device, generator=generator)
        return torch.randn(batch, 3, size, size, device=device, generator=generator)


_TV_VGG_CFG = {"vgg11": ("A", False), "vgg16": ("D", False), "vgg16_bn": ("D", True), "vgg19": ("E", False)}
# torchvision's AlexNet features: conv relu pool conv relu pool conv relu conv relu conv relu pool
_ALEXNET_LAYOUT = ["conv", "relu", "pool"] * 2 + ["conv", "relu"] * 3 + ["pool"]


def _tv_vgg_taps(arch: str) -> dict[str, Tap]:
    cfg, bn = _TV_VGG_CFG[arch]
    return vgg_taps(feature_layout(tv_vgg.cfgs[cfg], bn), (0, 3, 6))


# The original code re-initialises a pretrained VGG/AlexNet's whole classifier (fc1, fc2 and fc3), and a
# ResNet's extra block and 3-layer head (which ImageNet weights do not have)
_VGG_HEAD, _VGG_OUTPUT = ("classifier.",), ("classifier.6.",)
_RESNET_HEAD = _RESNET_OUTPUT = ("fc.", "features.")
_RESNET_WIDTH = {"resnet18": 4096, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}  # the head's W

_OWN_HEAD, _OWN_OUTPUT = _VGG_HEAD, _VGG_OUTPUT  # the text and point-cloud nets: the tiny VGG's head, at the root
_INJECT = {"text": EMBED}  # modality → the submodule whose output the σ fit's noise replaces (others: the input)


class _Parts(NamedTuple):
    """How the registry builds one kind of architecture."""
    builder: Callable[..., nn.Module]
    taps: dict[str, Tap]
    head: tuple[str, ...]
    output: tuple[str, ...]
    pretrained_root: str = "net"


# how the registry builds each kind of architecture of kdq.models.ARCH_TABLE: name → its parts
_KINDS: dict[str, Callable[[str], _Parts]] = {
    "torchvision_alexnet": lambda name: _Parts(partial(build_torchvision_vgg, name),
                                               vgg_taps(_ALEXNET_LAYOUT, (1, 4, 6)), _VGG_HEAD, _VGG_OUTPUT),
    "torchvision_vgg": lambda name: _Parts(partial(build_torchvision_vgg, name), _tv_vgg_taps(name), _VGG_HEAD,
                                           _VGG_OUTPUT),
    "torchvision_resnet": lambda name: _Parts(partial(build_torchvision_resnet, name, hidden=_RESNET_WIDTH[name]),
                                              RESNET_TAPS, _RESNET_HEAD, _RESNET_OUTPUT),
    "vgg_tiny": lambda name: _Parts(partial(build_vgg_tiny, batch_norm=name.endswith("_bn")),
                                    vgg_taps(feature_layout(tiny_cfg(), name.endswith("_bn")), (0, 3, 6)),
                                    _VGG_HEAD, _VGG_OUTPUT),
    "resnet_tiny": lambda name: _Parts(build_resnet_tiny, RESNET_TAPS, _RESNET_HEAD, _RESNET_OUTPUT),
    "transformer_tiny": lambda name: _Parts(build_transformer_tiny, TEXT_TAPS, _OWN_HEAD, _OWN_OUTPUT, ""),
    "bilstm_tiny": lambda name: _Parts(build_bilstm_tiny, TEXT_TAPS, _OWN_HEAD, _OWN_OUTPUT, ""),
    "pointnet_tiny": lambda name: _Parts(build_pointnet_tiny, POINTNET_TAPS, _OWN_HEAD, _OWN_OUTPUT, ""),
    "dgcnn_tiny": lambda name: _Parts(build_dgcnn_tiny, DGCNN_TAPS, _OWN_HEAD, _OWN_OUTPUT, ""),
}


def _entry(name: str) -> ArchInfo:
    family, size, kind = ARCH_TABLE[name]
    parts = _KINDS[kind](name)
    modality = ARCH_MODALITY[name]
    return ArchInfo(family, size, parts.taps, parts.head, parts.output, name=name, builder=parts.builder,
                    pretrained_root=parts.pretrained_root, modality=modality, inject=_INJECT.get(modality))


ARCHS: dict[str, ArchInfo] = {name: _entry(name) for name in ARCH_NAMES}
MODELS: dict[str, Callable[..., nn.Module]] = {name: info.builder for name, info in ARCHS.items()}
TAPS: dict[str, dict[str, Tap]] = {name: info.taps for name, info in ARCHS.items()}


class UnknownArch(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def arch_info(name: str) -> ArchInfo:
    if name not in ARCHS:
        raise UnknownArch(f"unknown architecture {name!r}; known: {', '.join(sorted(MODELS))}")
    return ARCHS[name]


def build_model(name: str, num_classes: int, pretrained: dict[str, Any] | None = None,
                dropout: float | None = None, keep_head: bool = False, **options: Any) -> nn.Module:
    """Build a registered architecture with fresh docs/method.md §0 weights (seed torch before calling).

    ``pretrained`` is a torchvision-format state dict of the backbone (read from a local file by the caller;
    kdq never downloads): see :func:`load_pretrained`.  ``dropout`` None keeps the architecture's default (0.5).
    ``options`` go to the builder: the text nets take ``vocab_size`` (default 64; a dataset's vocab.txt gives it)
    and ``max_length`` (default 64).
    """
    return arch_info(name).build(num_classes, pretrained, dropout, keep_head, **options)


def _root(model: nn.Module, info: ArchInfo) -> nn.Module:
    return model.get_submodule(info.pretrained_root) if info.pretrained_root else model


def load_pretrained(model: nn.Module, info: ArchInfo | str, state: dict[str, Any],
                    where: str = "the pretrained weights", keep_head: bool = False) -> None:
    """Load a torchvision-format state dict into the model (the registry's: into ``model.net``).  As the original
    code, the head keeps its fresh initialisation (VGG/AlexNet: the whole classifier, fc1-fc3; ResNets: the extra
    block and the head); ``keep_head`` takes fc1/fc2 from the file too (only the output layer is fresh).  A
    ValueError names bad keys/shapes."""
    info = arch_info(info) if isinstance(info, str) else info
    root = _root(model, info)
    own = {k: v.shape for k, v in root.state_dict().items()}
    root.load_state_dict(_pretrained_subset(own, info, state, where, keep_head), strict=False)


def check_pretrained(info: ArchInfo | str, num_classes: int, state: dict[str, Any],
                     where: str = "the pretrained weights", dropout: float | None = None,
                     keep_head: bool = False) -> None:
    """The checks of :func:`load_pretrained` without building the model's weights (it is built on the meta
    device): a ValueError naming bad keys/shapes, before a stage writes anything."""
    info = arch_info(info) if isinstance(info, str) else info
    with torch.device("meta"):
        root = _root(info.build(num_classes, dropout=dropout), info)
    _pretrained_subset({k: v.shape for k, v in root.state_dict().items()}, info, state, where, keep_head)


def _pretrained_subset(own: dict[str, torch.Size], info: ArchInfo, state: Any, where: str,
                       keep_head: bool) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise ValueError(f"{where} hold a {type(state).__name__}, not a state dict")
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    name = info.name
    new = info.output if keep_head else info.head
    usable, problems = {}, []
    for key, value in state.items():
        key = str(key).removeprefix("module.")
        if key.startswith(new):
            continue  # replaced by the paper's head: keep the fresh initialisation
        if key not in own:
            problems.append(f"unexpected key {key}")
        elif not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif own[key] != value.shape:
            problems.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key])}")
        else:
            usable[key] = value
    missing = [k for k in own if k not in usable and not k.startswith(new)]
    problems += [f"missing key {k}" for k in missing]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} problems)" if len(problems) > 5 else "")
        raise ValueError(f"{where} do not fit {name}: {shown}")
    return usable


def feature_fn(model: nn.Module, arch: ArchInfo | str, layer: str) -> nn.Module:
    """The truncated forward of ``model`` at ``layer`` (pre-activation output)."""
    info = arch_info(arch) if isinstance(arch, str) else arch
    if layer not in info.taps:
        known = ", ".join(info.taps) if info.taps else "none"
        raise KeyError(f"layer {layer!r} has no tap in {info.name or 'this architecture'} (taps: {known}; "
                       f"layers: {', '.join(LAYERS)})")
    return truncated(model, info.taps[layer])


def _timm_classes(module: str, name: str) -> tuple[type, ...]:
    """timm's model class ``timm.models.<module>.<name>`` when timm has been imported (a timm model exists only
    then; timm is an optional extra and slow to import), else none."""
    import sys

    if "timm" not in sys.modules:
        return ()
    return (getattr(importlib.import_module(f"timm.models.{module}"), name),)


def family_of(model: nn.Module) -> str:
    """The family (``kdq.models.FAMILIES``) of a built model, by its class: a ResNet (kdq's, torchvision's or
    timm's, ResNeXt and wide ResNets included) is ``"resnet"``, a VGG ``"vgg"``, an AlexNet ``"alexnet"``, anything else
    ``"other"``; a kdq wrapper (``.net``) is the family of the net it wraps."""
    from torchvision.models import AlexNet, ResNet, VGG

    from kdq.models.resnet import ResNetKD
    from kdq.models.vgg import TinyVGG, WrappedNet

    if isinstance(model, WrappedNet):
        model = model.net
    for family, classes in (("resnet", (ResNet, ResNetKD, *_timm_classes("resnet", "ResNet"))),
                            ("vgg", (VGG, TinyVGG, *_timm_classes("vgg", "VGG"))), ("alexnet", (AlexNet,))):
        if isinstance(model, classes):
            return family
    return "other"
