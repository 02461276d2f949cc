"""The architecture a stage runs, from its settings: ``--arch`` (a registry name, ``torchvision:<name>`` or
``package.module:factory``), ``--taps`` and ``--image-size`` (the config fields of :func:`arch_option`,
:func:`taps_option`, :func:`image_size_option`).

Every stage resolves its architecture here, so a bad one is the same one-line error everywhere, and records it in
run.json (``model``: arch, taps, image size), so that a later stage can take it from the run it reads.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from kdq.function.checks import POSITIVE_INT
from kdq.function.cli import UserError
from kdq.function.config import option

REGISTRY_HELP = "a registry name ({names}), torchvision:<name> (any torchvision classification model), " \
                "timm:<name> (any timm model, fresh weights; pip install timm) or package.module:factory " \
                "(factory(num_classes=C) → nn.Module, importable from PYTHONPATH)"


def arch_option(group: str, what: str = "the net", recorded: str | None = None, required: bool = True):
    """The config field ``arch`` (``--arch``; ``teacher_arch`` gives ``--teacher-arch``).  ``recorded`` names the
    run whose run.json gives it when it is left out (it is then optional)."""
    from kdq.models import ARCH_NAMES

    default = f"; default: what {recorded} recorded" if recorded else ""
    return option(None, f"architecture of {what}: " + REGISTRY_HELP.format(names=", ".join(ARCH_NAMES)) + default,
                  group, required=required and recorded is None)


def taps_option(group: str, recorded: str | None = None):
    """The config field ``taps`` (``--taps``)."""
    default = f"; default: what {recorded} recorded" if recorded else ""
    return option(None, "for torchvision:/timm:/module: architectures, the submodule or torch.fx graph node (e.g. "
                        "layer4.0.add) whose output is each layer's "
                        "pre-activation feature (conv, fc1, fc2, fc3; any subset) and the weight whose distance "
                        "is recorded (default <module>.weight, or for a node without one the conv or linear layer "
                        "before it); without it the last Conv2d is conv and the last "
                        "Linear fc3" + default, group, metavar="LAYER=MODULE[:WEIGHT],...")


def image_size_option(group: str, recorded: str | None = None):
    """The config field ``image_size`` (``--image-size``)."""
    return option(None, "input side S (default: the registry's for registry architectures, 224 otherwise"
                        + (f", or what {recorded} recorded" if recorded else "") + ")", group, check=POSITIVE_INT,
                  metavar="S")


def resolve_arch(arch: str, taps: str | None = None, image_size: int | None = None, flag: str = "--arch"):
    """The :class:`~kdq.models.registry.ArchInfo` the flags name; a one-line UserError otherwise."""
    from kdq.models import arch_info
    from kdq.models.external import TapError, external_arch, is_external, parse_taps

    taps_flag = flag.replace("arch", "taps")
    if not is_external(arch):
        if taps:
            raise UserError(f"{taps_flag} applies to torchvision:/timm:/module: architectures; {arch} has its own "
                            "taps")
        try:
            info = arch_info(arch)
        except KeyError as exc:
            raise UserError(f"{flag}: {exc}") from None
        if image_size is not None and image_size != info.input_size:
            info = dataclasses.replace(info, input_size=image_size)
        return info
    try:
        parsed = parse_taps(taps) if taps else None
    except ValueError as exc:
        raise UserError(f"{taps_flag}: {exc}") from None
    try:
        return external_arch(arch, parsed, image_size)
    except TapError as exc:
        raise UserError(f"{taps_flag} {exc}") from None
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def arch_or_error(name: str, flag: str = "--arch"):
    """A registry architecture by name (no taps, its own size); a one-line error listing the known ones."""
    return resolve_arch(name, flag=flag)


def model_record(info) -> dict[str, Any]:
    """What run.json records of an architecture (``model``): enough to rebuild it in a later stage."""
    from kdq.models.external import taps_text

    record = {"arch": info.name, "taps": taps_text(info.taps), "image_size": info.input_size, "family": info.family}
    if info.modality != "image":  # the builder options the data fixed (a text net's vocabulary and length)
        record.update(modality=info.modality, options=dict(info.options), inject=info.inject)
    return record


def probe_input(info):
    """The probe batch that finds the parameters and modules up to a tap (:func:`kdq.models.params_up_to`): None —
    two images of the architecture's size, as always — for an image net; token ids or point clouds otherwise."""
    if info.modality == "image":
        return None
    vocab = info.options.get("vocab_size")
    return info.example_input(2, **({"vocab_size": vocab} if vocab else {}))


def recorded_model(record: dict[str, Any]) -> dict[str, Any] | None:
    """The ``model`` a run.json records (arch, taps, image size), or None (runs of the original code); a run of
    an older kdq records only ``settings.arch``."""
    model = record.get("model")
    if isinstance(model, dict) and isinstance(model.get("arch"), str):
        return model
    arch = (record.get("settings") or {}).get("arch")
    return {"arch": arch} if isinstance(arch, str) else None


def arch_from(args, record: dict[str, Any] | None, prefix: str = "",
              source: str = "the run"):
    """The architecture of the flags ``--<prefix>arch/taps/image-size``, each left out taken from ``record`` (a
    run.json).  ``--<prefix>arch`` and ``--<prefix>image-size`` given explicitly must agree with what the record
    says; ``--<prefix>taps`` may name other taps (which layer to analyse or distil is the later stage's choice: the
    weights' keys decide whether the checkpoints fit, and the training run's weight distance stays its own)."""
    key = prefix.replace("-", "_")
    arch, taps, size = (getattr(args, f"{key}{name}") for name in ("arch", "taps", "image_size"))
    model = recorded_model(record or {}) or {}
    old_arch = model.get("arch")
    if arch is not None and old_arch is not None and arch != old_arch:
        raise UserError(f"--{prefix}arch {arch} but {source} was made with {old_arch}")
    arch = arch or old_arch
    if arch is None:
        raise UserError(f"--{prefix}arch is needed: {source} does not record its architecture")
    from kdq.models.external import is_external

    old_taps = model.get("taps") if is_external(arch) else None
    old_size = model.get("image_size")
    if size is not None and old_size is not None and size != old_size:
        raise UserError(f"--{prefix}image-size {size} but {source} was made with {old_size}")
    info = resolve_arch(arch, taps if taps is not None else old_taps, size or old_size, f"--{prefix}arch")
    options = model.get("options")
    if isinstance(options, dict) and options:  # the builder options the training data fixed
        info = dataclasses.replace(info, options={**info.options, **options})
    if model.get("modality") in ("text", "points") and info.modality == "image":  # a module:factory model's
        info = dataclasses.replace(info, modality=model["modality"], inject=model.get("inject"))
    return info


def student_arch(args, info, teacher_info):
    """The student's architecture: ``info`` (what ``--arch``, ``--taps`` and ``--image-size`` resolve to), except
    that a student of the teacher's own architecture takes the teacher's taps and image size where those flags are
    left out."""
    from kdq.models.external import is_external, taps_text

    if info.name != teacher_info.name:
        return info
    taps = args.taps if args.taps is not None or not is_external(args.arch) else taps_text(teacher_info.taps)
    size = args.image_size if args.image_size is not None else teacher_info.input_size
    if (taps, size) == (args.taps, args.image_size):
        return info
    return resolve_arch(args.arch, taps, size)


def check_input_size(info, num_classes: int, flag: str = "--image-size") -> None:
    """One forward of a 1-image batch at the architecture's input size S, on the meta device (shapes only: no
    weights are made, nothing is computed; on the CPU when the model cannot run there): an S too small for the
    architecture (a pooling that would leave no pixel) is one UserError naming ``flag``, before a stage writes
    anything.  ``num_classes``: the head's outputs."""
    import torch

    from kdq.function.io.checkpoint import first_line

    size = info.input_size
    if info.modality != "image":
        _check_example_forward(info, num_classes)
        return

    def forward(device: str) -> None:
        with torch.random.fork_rng(devices=[]), torch.device(device):
            model = info.build(num_classes).eval()
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))

    try:
        forward("meta")
    except Exception:  # noqa: BLE001 - an op without a meta kernel; the real forward decides
        try:
            forward("cpu")
        except Exception as exc:  # noqa: BLE001 - whatever the model raises, it cannot take this input
            raise UserError(f"{flag} {size}: {info.name} cannot take {size}x{size} inputs (a forward of one image "
                            f"fails: {first_line(exc)})") from exc


def _check_example_forward(info, num_classes: int) -> None:
    """One CPU forward of a token or point net on its probe input (they are small): a net that cannot take its
    inputs is one UserError before a stage writes anything."""
    import torch

    from kdq.function.io.checkpoint import first_line

    try:
        with torch.random.fork_rng(devices=[]):
            model = info.build(num_classes).eval()
            with torch.no_grad():
                model(probe_input(info))
    except Exception as exc:  # noqa: BLE001 - whatever the model raises, it cannot take this input
        raise UserError(f"--arch {info.name} cannot take its {info.modality} inputs (a forward fails: "
                        f"{first_line(exc)})") from exc
