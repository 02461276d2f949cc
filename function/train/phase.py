"""A training phase as data, and the one place that runs any phase (docs/method.md §1, §4).

A :class:`Phase` says only what differs between train_net's single phase and distillation's feature, Hinton and
fine-tune phases: which parameters learn, the module a step runs through, the step, the validation, the learning
rate (a schedule by epoch or a :class:`Plateau` scheduler), the checkpoint epochs, its name, meta and train mode.
What is the same for every phase lives here once: :func:`start_phase` wraps the module in DDP when distributed,
builds SGD from the run's ``--momentum`` and ``--weight-decay``, the weight-distance tracker and the
:class:`~kdq.function.train.engine.EpochLoop`, and reads the resume state with ``--resume``; :func:`finish_phase`
runs the epochs (checkpoints on the schedule, a resume state after each) and returns a :class:`PhaseResult`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdq.function.runtime import startup_step
from kdq.function.train import engine  # engine.EpochLoop looked up when a phase starts (tests replace it)
from kdq.function.train.weight_distance import WeightDistance

# step(net, images, labels) -> (loss, number of correct top-1 predictions or None); ``net`` is the phase's module,
# wrapped in DDP when the run is distributed
PhaseStep = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class Plateau:
    """ReduceLROnPlateau on the validation loss (the training loss without validation), mode ``min``."""
    factor: float
    patience: int


@dataclass(frozen=True)
class Phase:
    """One training phase: what it trains and how (the run's folder, seed, device and SGD settings come from the
    :class:`~kdq.function.train.stage.TrainingRun`).

    ``model`` is what the checkpoints hold and ``--resume`` restores; ``net`` the module ``step`` runs (``model``
    or a part of it, e.g. its truncated forward and an adapter).  ``learn``: the parameters SGD updates, in this
    order (it fixes the optimizer state's layout); with ``freeze_others`` every other parameter of ``model`` has
    ``requires_grad`` False before the DDP wrap (DDP then ignores it).  ``track``: ``{layer: weight name}`` whose
    weight distance is written as ``weight_diff.npy`` (None: none).  ``lr``: the optimizer's learning rate;
    ``lr_at(e)`` sets epoch e's, or ``plateau`` lowers it.  ``name``: the files ``<name>_state.pth.tar`` and
    ``<name>_log.{json,csv}``; ``meta``: extra keys of every checkpoint.
    """
    name: str
    model: nn.Module
    net: nn.Module
    step: PhaseStep
    learn: list[nn.Parameter]
    loader: DataLoader
    epochs: int
    lr: float
    arch: str
    meta: dict
    freeze_others: bool = False
    lr_at: Callable[[int], float] | None = None
    plateau: Plateau | None = None
    checkpoints: frozenset[int] = frozenset()
    track: Mapping[str, str] | None = None
    validate: Callable[[], dict[str, float]] | None = None
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)
    train_mode: Callable[[], None] | None = None


@dataclass(frozen=True)
class PhaseResult:
    """A finished phase: its log rows, best validation top-1 and its last epoch's checkpoint (docs/method.md §4)."""
    history: list[dict]
    best_acc1: float
    last_state: dict


def cross_entropy_step(net: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """The step of a phase trained on labels: cross-entropy of ``net``'s logits, and its correct top-1 count."""
    logits = net(images)
    return nn.functional.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()


def accuracy_validation(model: nn.Module, val_loader: DataLoader | None, device: torch.device):
    """The validation of a phase that learns labels: cross-entropy and top-1 of ``model`` on ``val_loader``
    (None without a validation split)."""
    return partial(engine.evaluate, model, val_loader, device) if val_loader is not None else None


def tracked_weights(info) -> dict[str, str]:
    """``{layer: analysed weight}`` of every tap of the architecture ``info``: the weight distances a phase that
    writes ``weight_diff.npy`` tracks (docs/method.md §1)."""
    return {layer: tap.weight for layer, tap in info.taps.items()}


def wrap_ddp(module: nn.Module, ctx) -> nn.Module:
    """``module`` under DistributedDataParallel when the run is distributed, else itself."""
    return nn.parallel.DistributedDataParallel(module) if ctx.enabled else module


def set_learning(phase: Phase) -> None:
    """With ``freeze_others``: only ``phase.learn``'s parameters of ``phase.model`` keep ``requires_grad``."""
    if phase.freeze_others:
        learning = {id(p) for p in phase.learn}
        for p in phase.model.parameters():
            p.requires_grad_(id(p) in learning)


def build_loop(run, phase: Phase) -> engine.EpochLoop:
    """The phase's DDP wrap, SGD optimizer (the run's momentum and weight decay), plateau scheduler, tracker and
    epoch loop."""
    args = run.args
    set_learning(phase)
    net = wrap_ddp(phase.net, run.ctx)
    optimizer = torch.optim.SGD(phase.learn, lr=phase.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    plateau = None if phase.plateau is None else torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=phase.plateau.factor, patience=phase.plateau.patience)
    tracker = WeightDistance(phase.model, phase.track) if phase.track is not None else None
    return engine.EpochLoop(
        out=args.out, model=phase.model, optimizer=optimizer, step_fn=partial(phase.step, net), loader=phase.loader,
        device=run.device, ctx=run.ctx, seed=args.seed, epochs=phase.epochs, arch=phase.arch,
        checkpoints=set(phase.checkpoints), tracker=tracker, lr_at=phase.lr_at, plateau=plateau,
        validate=phase.validate, name=phase.name, meta=phase.meta, extra_modules=dict(phase.extra_modules),
        train_mode=phase.train_mode, save_optimizer=args.save_optimizer, progress=args.progress,
        tensorboard=args.tensorboard)


def start_phase(run, phase: Phase) -> engine.EpochLoop:
    """The phase ready to run: its loop built (:func:`build_loop`) and, with ``--resume``, its newest epoch state
    loaded (a damaged one is one UserError, raised before the caller records the run as running)."""
    with startup_step(f"starting the {phase.name} phase"):
        loop = build_loop(run, phase)
    if run.args.resume:
        loop.try_resume()
    return loop


def finish_phase(loop: engine.EpochLoop) -> PhaseResult:
    """Run the started phase's remaining epochs.  The result keeps no reference to the loop, so the phase's DDP
    wrapper goes once the caller drops the loop."""
    history = loop.run()
    return PhaseResult(history=history, best_acc1=loop.best_acc1, last_state=loop.checkpoint_state(loop.epochs))


def run_phase(run, phase: Phase) -> PhaseResult:
    """Start the phase (resume included) and run it."""
    return finish_phase(start_phase(run, phase))
