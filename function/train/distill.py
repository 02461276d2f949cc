"""Knowledge distillation (docs/method.md §1): the losses, the frozen teacher, the student-side adapter and the
phases — :func:`feature_phase` and :func:`hinton_phase` (phase 1) and :func:`finetune_phase` (phase 2), each a
:class:`~kdq.function.train.phase.Phase` over the :class:`Distillation` they share.

Losses are pure functions of tensors (Hinton's also as a small ``nn.Module`` holding its settings):

* feature KD — :func:`feature_mse`: ``mean((student_feature − teacher_feature)²)`` over batch and elements,
  the feature being a layer's pre-activation output (``kdq.models.truncated``).
* logit KD (Hinton, Vinyals & Dean 2015) — :func:`hinton_loss`::

      α · T² · KL( softmax(t/T) ‖ softmax(s/T) )  +  (1 − α) · CE(s, y)

  ``s``/``t`` student/teacher logits, ``T`` the temperature, KL summed over classes and averaged over the
  batch, CE averaged over the batch.  The ``T²`` keeps the soft term's gradients on the scale of the hard
  term's whatever ``T`` is.

The teacher is never updated: :func:`freeze_teacher` turns its gradients off and puts it in eval mode (the
original calls ``teacher_model.eval()``), or, with ``--teacher-mode train``, makes BatchNorm use batch statistics
*without* updating its running statistics, so the teacher's state dict stays bit-identical either way.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kdq.function.archs import probe_input
from kdq.function.cli import UserError
from kdq.function.io.checkpoint import (check_fits, check_recorded_arch, load_checkpoint, num_classes_in,
                                        state_dict_of)
from kdq.function.runtime import all_reduce_sum
from kdq.function.train.options import TEACHER_FORMATS
from kdq.function.train.phase import Phase, Plateau, accuracy_validation, cross_entropy_step
from kdq.models.taps import Tap, modules_up_to, params_up_to, truncated


def feature_mse(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error between two features of the same shape (docs/method.md §1 phase-1 loss)."""
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(f"feature shapes differ: student {tuple(student_feature.shape)} vs teacher "
                         f"{tuple(teacher_feature.shape)}")
    return F.mse_loss(student_feature, teacher_feature)


def hinton_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """``α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, labels)`` (batch means; see the module doc)."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return alpha * t * t * kl + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


class HintonLoss(nn.Module):
    """:func:`hinton_loss` with its temperature and α checked once and held."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature, self.alpha = temperature, alpha

    def forward(self, student_logits, teacher_logits, labels) -> torch.Tensor:
        return hinton_loss(student_logits, teacher_logits, labels, self.temperature, self.alpha)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"


def make_adapter(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """A learned map from the student's feature to the teacher's (per-sample shapes, no batch axis):
    a 1×1 conv for (C, H, W) features with equal H, W; a linear layer for (D,) features."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) == 3 and len(t) == 3:
        if s[1:] != t[1:]:
            raise ValueError(f"a 1x1 adapter maps channels only, but the spatial sizes differ "
                             f"(student {s}, teacher {t})")
        return nn.Conv2d(s[0], t[0], kernel_size=1)
    if len(s) == 1 and len(t) == 1:
        return nn.Linear(s[0], t[0])
    raise ValueError(f"no adapter maps a student feature of shape {s} to a teacher feature of shape {t}")


def _batch_norms(model: nn.Module):
    """Every BatchNorm module of ``model``."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_teacher(model: nn.Module, mode: str = "eval") -> nn.Module:
    """Make ``model`` a fixed teacher: no gradients, and ``mode`` ``train`` (dropout on, BatchNorm on batch
    statistics — but its running statistics are never updated) or ``eval``."""
    if mode not in ("train", "eval"):
        raise ValueError(f"teacher mode must be train or eval, got {mode!r}")
    model.requires_grad_(False)
    model.train(mode == "train")
    if mode == "train":
        for bn in _batch_norms(model):
            bn.track_running_stats = False  # batch statistics, running buffers untouched
    return model


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """Put ``modules`` in eval mode and give every submodule back its own training flag afterwards."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@torch.no_grad()
def feature_shape(fn: nn.Module, size: int, device: torch.device | str = "cpu", example=None) -> tuple[int, ...]:
    """The per-sample shape of ``fn``'s output for one ``3×size×size`` input, or for ``example`` (token ids, point
    clouds: a probe batch), run in eval mode."""
    inputs = torch.zeros(1, 3, size, size, device=device) if example is None else example.to(device)
    with eval_mode(fn):
        return tuple(fn(inputs).shape[1:])


@torch.no_grad()
def evaluate_feature_mse(student_fn: nn.Module, teacher_fn: nn.Module, loader: DataLoader,
                         device: torch.device, adapter: nn.Module | None = None) -> dict[str, float]:
    """Mean feature MSE over ``loader`` with both nets in eval mode (``val_mse``)."""
    total, n = 0.0, 0
    with eval_mode(student_fn, teacher_fn, *([adapter] if adapter is not None else [])):
        for images, _ in loader:
            images = images.to(device)
            s = student_fn(images)
            if adapter is not None:
                s = adapter(s)
            total += F.mse_loss(s, teacher_fn(images), reduction="sum").item() / s[0].numel()
            n += images.shape[0]
    total, n = all_reduce_sum([total, float(n)], device)
    return {"val_mse": total / max(n, 1)}


FLAT_PHASE1 = 1e-3  # phase 1's loss changed by less than this share of its first value: the student learned nothing
ZERO_LOSS = 1e-10  # a phase-1 loss at or below this at both ends is (numerically) zero: flat, whatever its change


def phase1_trend(history: list[dict]) -> tuple[str, str] | None:
    """What phase 1's log (one dict per epoch) says went wrong, as ``(kind, detail)``: ``"diverged"`` when the last
    epoch's validation MSE (or, without one, its training loss) is above the first's, ``"flat"`` when it changed by
    less than :data:`FLAT_PHASE1` of the first or stayed at (numerical) zero (:data:`ZERO_LOSS`); None when it fell,
    or with fewer than two epochs."""
    if not isinstance(history, list) or len(history) < 2 or not all(isinstance(e, dict) for e in history):
        return None
    key = "val_mse" if all(isinstance(e.get("val_mse"), (int, float)) for e in history) else "loss"
    first, last = history[0].get(key), history[-1].get(key)
    if not isinstance(first, (int, float)) or not isinstance(last, (int, float)):
        return None
    what, span = key.replace("_", " "), f"{first:.4g} (epoch {history[0].get('epoch')}) to {last:.4g} " \
                                         f"(epoch {history[-1].get('epoch')})"
    if abs(last - first) <= FLAT_PHASE1 * abs(first) or max(abs(first), abs(last)) <= ZERO_LOSS:
        return "flat", f"phase-1 {what} stayed flat from {span} (a relative change below {FLAT_PHASE1:g})"
    if last > first:
        return "diverged", f"phase-1 {what} rose from {span}"
    return None


def phase1_warning(history: list[dict]) -> str | None:
    """The warning distillation logs at the end of phase 1 (and records in run.json) when :func:`phase1_trend`
    finds a problem, saying what to try; None otherwise."""
    trend = phase1_trend(history)
    if trend is None:
        return None
    kind, detail = trend
    if kind == "diverged":
        return f"{detail}: the student did not learn the teacher's feature (try a smaller --lr)"
    return (f"{detail}: the student learned nothing of the teacher's feature; the feature at the layer may be "
            "(nearly) constant (a zero-initialised BatchNorm right before the tap: try another --teacher-taps/--taps, "
            "e.g. the block's output) or the learning rate too small (--lr)")


def load_teacher(path: Path, info, fmt: str = "kdq", flag: str = "--teacher_checkpoint",
                 arch_flag: str = "--teacher-arch") -> tuple[nn.Module, dict[str, Any]]:
    """Build the architecture ``info`` and load the teacher weights in ``path`` into it (``weights_only=True``).

    ``fmt`` ``kdq``: a train_net checkpoint (``state_dict``; the original code's load too, a ``module.`` prefix is
    stripped).  ``torchvision``: a torchvision-format state dict of the whole model (``features.*``,
    ``classifier.*``), read as ``net.*`` for registry architectures.  The number of classes is the checkpoint's
    ``num_classes`` or the rows of its fc3 weight.  Returns the model (on the CPU, random state untouched) and
    ``{"num_classes", "classes", "epoch"}``; every failure is a one-line UserError.
    """
    if fmt not in TEACHER_FORMATS:
        raise UserError(f"--teacher-format: {fmt!r} is not one of {', '.join(TEACHER_FORMATS)}")
    ckpt = load_checkpoint(path, flag)
    if fmt == "kdq":
        check_recorded_arch(ckpt, info.name, f"{flag}: {path}", arch_flag)
    try:
        sd = state_dict_of(ckpt)
    except ValueError:
        raise UserError(f"{flag}: {path} holds no state dict of tensors") from None
    if fmt == "torchvision" and info.pretrained_root:
        sd = {f"{info.pretrained_root}.{k}": v for k, v in sd.items()}
    fc3 = info.taps["fc3"].weight if "fc3" in info.taps else None
    num_classes = num_classes_in(ckpt if fmt == "kdq" else {}, sd, fc3) or 1
    with torch.random.fork_rng(devices=[]):
        model = info.build(num_classes)
    hint = ""
    if fmt == "kdq" and info.pretrained_root and not any(k.startswith(info.pretrained_root + ".") for k in sd):
        hint = " (for a torchvision-format state dict pass --teacher-format torchvision)"
    try:
        check_fits(model, sd, info.name, f"{flag}: {path}", arch_flag)
    except UserError as exc:
        raise UserError(f"{exc}{hint}") from None
    model.load_state_dict(sd)
    classes = ckpt.get("classes") if fmt == "kdq" else None
    return model, {"num_classes": num_classes, "classes": list(classes) if isinstance(classes, list) else None,
                   "epoch": ckpt.get("epoch") if isinstance(ckpt.get("epoch"), int) else None}


@dataclass
class Teacher:
    """The frozen teacher and what the student is checked against (nothing of it is written)."""
    model: nn.Module
    fn: nn.Module  # its truncated forward at the layer (the whole net for hinton)
    meta: dict[str, Any]
    student_shape: tuple[int, ...]  # per-sample feature shapes at the layer
    teacher_shape: tuple[int, ...]


def prepare_teacher(path: Path, teacher_info, fmt: str, mode: str, student_info, layer: str, method: str,
                    adapter: bool, classes: list[str], split: str, dropout: float | None) -> Teacher:
    """Load the frozen teacher and check it against the student (before any output is written)."""
    model, meta = load_teacher(path, teacher_info, fmt)
    if method == "hinton" or layer == "fc3":  # logits are compared class by class
        if meta["num_classes"] != len(classes):
            raise UserError(f"--teacher_checkpoint: the teacher has {meta['num_classes']} classes, split "
                            f"{split!r} has {len(classes)}; distilling logits needs the same classes")
        if meta["classes"] is not None and meta["classes"] != classes:
            raise UserError(f"--teacher_checkpoint: the teacher's classes ({', '.join(meta['classes'][:3])}, ...) "
                            f"are not those of split {split!r} in the same order")
    freeze_teacher(model, mode)
    for info, flag in ((teacher_info, "--teacher-taps"), (student_info, "--taps")):
        if layer not in info.taps:
            raise UserError(f"--layer {layer}: {info.name} has no tap there ({flag} names "
                            f"{', '.join(info.taps) or 'none'})")
    fn = model if method == "hinton" else truncated(model, teacher_info.taps[layer])
    with torch.random.fork_rng(devices=[]):
        probe = student_info.build(len(classes), dropout=dropout)
    size, example = student_info.input_size, probe_input(student_info)
    student_shape = feature_shape(truncated(probe, student_info.taps[layer]), size, example=example)
    teacher_shape = feature_shape(fn, size, example=example)
    if adapter:
        try:
            make_adapter(student_shape, teacher_shape)
        except ValueError as exc:
            raise UserError(f"--adapter at --layer {layer}: {exc}") from None
    elif student_shape != teacher_shape:
        raise UserError(f"--layer {layer}: the teacher's feature ({teacher_info.name}) has shape {teacher_shape} "
                        f"but the student's ({student_info.name}) has {student_shape}; they must agree"
                        + (" (or pass --adapter to learn a map between them)" if method == "feature" else ""))
    return Teacher(model, fn, meta, student_shape, teacher_shape)


def split_at_layer(student: nn.Module, tap: Tap, size: int, example=None) -> tuple[list[str], list[str]]:
    """The student's parameter names up to and including the layer (phase 1 learns them, phase 2 freezes them)
    and the names of its modules that run before the layer's output exists (eval in phase 2 with
    ``--frozen-mode eval``); found on ``example`` (tokens, points), else on two ``size``-px images."""
    return params_up_to(student, tap, size, example), modules_up_to(student, tap, size, example)


def build_student(info, num_classes: int, dropout: float | None, teacher: Teacher, adapter: bool,
                  device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    """The student and (with ``--adapter``) its adapter on ``device``, the teacher moved there too.  The student is
    built first after seeding, as in train_net: the same --arch and --seed give the same initialisation."""
    student = info.build(num_classes, dropout=dropout).to(device)
    mapper = make_adapter(teacher.student_shape, teacher.teacher_shape).to(device) if adapter else None
    teacher.model.to(device)
    return student, mapper


@dataclass(frozen=True)
class Distillation:
    """What the phases of one distillation share: the student (``model``), its forward up to the layer (``fn``)
    and adapter, the frozen teacher, the parameters up to the layer (``below``) and the modules that run before
    its output (``frozen_modules``), the loaders and the checkpoints' meta (``phase`` is added per phase)."""
    model: nn.Module
    fn: nn.Module
    adapter: nn.Module | None
    teacher: Teacher
    below: list[str]
    frozen_modules: list[str]
    arch: str
    loader: DataLoader
    val_loader: DataLoader | None
    device: torch.device
    meta: dict[str, Any]

    def phase(self, name: str, **fields: Any) -> Phase:
        """A phase that trains the student (its checkpoints hold it), with ``fields`` saying the rest."""
        return Phase(name=name, model=self.model, loader=self.loader, arch=self.arch,
                     meta={**self.meta, "phase": name}, **fields)

    def above(self) -> list[nn.Parameter]:
        """The student's parameters above the layer (phase 2 learns them), in the model's order."""
        return [p for name, p in self.model.named_parameters() if name not in self.below]


def feature_step(teacher_fn: nn.Module, net: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """Phase 1 of ``--method feature``: the MSE between ``net``'s feature and the teacher's (no accuracy)."""
    with torch.no_grad():
        target = teacher_fn(images)
    return feature_mse(net(images), target), None


def hinton_step(kd: HintonLoss, teacher_fn: nn.Module, net: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """``--method hinton``: the KD loss on the logits, and the student's correct top-1 count."""
    with torch.no_grad():
        target = teacher_fn(images)
    logits = net(images)
    return kd(logits, target, labels), (logits.argmax(1) == labels).sum()


def feature_phase(d: Distillation, epochs: int, lr: float, lr_at, checkpoints, track) -> Phase:
    """Phase 1 of ``--method feature``: only the layers up to the layer (and the adapter) learn, regressing the
    teacher's feature there; nothing above the layer runs."""
    net = d.fn if d.adapter is None else nn.Sequential(d.fn, d.adapter)
    learn = [dict(d.model.named_parameters())[name] for name in d.below]
    validate = partial(evaluate_feature_mse, d.fn, d.teacher.fn, d.val_loader, d.device, d.adapter) \
        if d.val_loader is not None else None
    return d.phase("distill", net=net, step=partial(feature_step, d.teacher.fn),
                   learn=learn + (list(d.adapter.parameters()) if d.adapter is not None else []),
                   freeze_others=True, epochs=epochs, lr=lr, lr_at=lr_at, checkpoints=frozenset(checkpoints),
                   track=track, validate=validate,
                   extra_modules={"adapter": d.adapter} if d.adapter is not None else {})


def hinton_phase(d: Distillation, epochs: int, lr: float, lr_at, checkpoints, track, temperature: float,
                 alpha: float) -> Phase:
    """``--method hinton``: the whole student learns the teacher's softened logits (and the labels)."""
    return d.phase("distill", net=d.model, step=partial(hinton_step, HintonLoss(temperature, alpha), d.teacher.fn),
                   learn=list(d.model.parameters()), epochs=epochs, lr=lr, lr_at=lr_at,
                   checkpoints=frozenset(checkpoints), track=track,
                   validate=accuracy_validation(d.model, d.val_loader, d.device))


def frozen_in_eval(d: Distillation) -> Callable[[], None]:
    """The train mode of ``--frozen-mode eval``: the student trains, the modules below the layer stay in eval."""
    def train_mode() -> None:
        """The student in train mode, its modules below the layer in eval."""
        d.model.train()
        for name in d.frozen_modules:
            d.model.get_submodule(name).eval()
    return train_mode


def finetune_phase(d: Distillation, epochs: int, lr: float, plateau: Plateau, frozen_mode: str) -> Phase:
    """Phase 2: the layers up to the layer frozen, those above learn on labels (ReduceLROnPlateau, no checkpoints
    on a schedule; ``frozen_mode`` eval keeps the frozen modules in eval mode)."""
    return d.phase("finetune", net=d.model, step=cross_entropy_step, learn=d.above(),
                   freeze_others=True, epochs=epochs, lr=lr, plateau=plateau,
                   validate=accuracy_validation(d.model, d.val_loader, d.device),
                   train_mode=frozen_in_eval(d) if frozen_mode == "eval" else None)
