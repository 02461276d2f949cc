"""Training loops shared by ``train_net`` and ``distillation`` (and so by ``supplement``).

:func:`train_one_epoch` and :func:`evaluate` are plain loops.  :class:`EpochLoop` runs a phase:
per-epoch seeding, learning rate, weight-distance tracking, docs/method.md §4 checkpoints on the schedule,
``weight_diff.npy``, a resume state after every epoch and a JSON/CSV log — all written atomically
by rank 0 alone.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from kdq.function.cli import UserError
from kdq.function.io.atomic import save_npy, write_json, write_text
from kdq.function.io.rundir import phase_files, proved
from kdq.function.io.checkpoint import (check_fits, checkpoint_path, first_line, load_checkpoint, save_checkpoint,
                                       state_dict_of)
from kdq.function.progress import progress
from kdq.function.runtime import Dist, all_reduce_sum, derive_seed, torch_seed
from kdq.function.train.weight_distance import WeightDistance

log = logging.getLogger(__name__)

# step_fn(images, labels) -> (loss, number of correct top-1 predictions or None)
StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def train_one_epoch(step_fn: StepFn, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, tracker: WeightDistance | None = None,
                    desc: str = "train", show: bool = True) -> dict[str, float]:
    """One pass over ``loader``; returns the mean loss and (when available) top-1 accuracy in %."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen, has_acc = 0, False
    for images, labels in progress(loader, desc=desc, leave=False, enabled=show):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loss, correct = step_fn(images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if tracker is not None:
            tracker.step()
        loss_sum += loss.detach().double() * labels.shape[0]
        if correct is not None:
            correct_sum += correct.double()
            has_acc = True
        seen += labels.shape[0]
    loss_total, correct_total, n = all_reduce_sum([loss_sum.item(), correct_sum.item(), float(seen)], device)
    out = {"loss": loss_total / max(n, 1)}
    if has_acc:
        out["acc1"] = 100.0 * correct_total / max(n, 1)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Cross-entropy and top-1 (%) of ``model`` over ``loader`` (summed over ranks when distributed)."""
    was_training = model.training
    model.eval()
    loss_sum = correct = n = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        n += labels.shape[0]
    model.train(was_training)
    loss_sum, correct, n = all_reduce_sum([loss_sum, correct, n], device)
    return {"val_loss": loss_sum / max(n, 1), "val_acc1": 100.0 * correct / max(n, 1)}


def loader_batch(batch_size: int, items: int) -> int:
    """The batch a loader is given: ``batch_size``, or ``items`` (at least 1) when the batch would hold all of
    them anyway (one batch per epoch either way, the same batches), so that any ``--batch-size`` works, however
    large (torch's sampler cannot count beyond ``sys.maxsize``)."""
    return max(1, min(batch_size, items))


def train_loader(dataset, batch_size: int, ctx: Dist, seed: int, workers: int, device: torch.device) -> DataLoader:
    """Shuffled loader whose *global* batch is ``batch_size`` whatever the world size."""
    if batch_size % ctx.world_size:
        raise ValueError(f"--batch-size {batch_size} is not divisible by the world size {ctx.world_size}")
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=torch_seed(seed))
    return DataLoader(dataset, batch_size=loader_batch(batch_size // ctx.world_size, len(sampler)), sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda", drop_last=False)


def eval_loader(dataset, batch_size: int, ctx: Dist, workers: int, device: torch.device) -> DataLoader:
    """Each rank evaluates every world_size-th image (no padding, so sums are exact)."""
    shard = Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world_size)))
    return DataLoader(shard, batch_size=loader_batch(batch_size, len(shard)), shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda")


def summary_writer_class():
    """torch's TensorBoard ``SummaryWriter``; a UserError when the optional ``tensorboard`` package is missing
    (the stages call it before they write anything, so ``--tensorboard`` fails early)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package (pip install tensorboard, or install kdq "
                        "with its [tensorboard] extra)") from None
    return SummaryWriter


@dataclass
class EpochLoop:
    """Runs epochs ``start+1 .. epochs`` of one training phase and writes its files under ``out`` (the stages build it
    from a :class:`~kdq.function.train.phase.Phase` through :func:`~kdq.function.train.phase.start_phase`).

    ``checkpoints``: epochs whose model is written as ``<e>.pth.tar`` (docs/method.md §4; 0 = before training).
    ``lr_at(e)``: learning rate of epoch e (1-based), or None to leave it to ``plateau``.
    ``validate()``: a dict of validation figures; ``val_acc1`` updates ``best_acc1``, ``val_loss``
    drives ``plateau``.
    ``extra_modules``: modules trained beside ``model`` (e.g. a distillation adapter); each one's state
    dict is stored under its key in every checkpoint and restored by ``--resume``.
    ``train_mode()``: puts the modules in their training modes at the start of every epoch (default
    ``model.train()``; distillation's phase 2 keeps its frozen layers in eval mode).
    """

    out: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: StepFn
    loader: DataLoader
    device: torch.device
    ctx: Dist
    seed: int
    epochs: int
    arch: str
    checkpoints: set[int] = field(default_factory=set)
    tracker: WeightDistance | None = None
    lr_at: Callable[[int], float] | None = None
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
    validate: Callable[[], dict[str, float]] | None = None
    name: str = "train"  # resume file <name>_state.pth.tar, log <name>_log.{json,csv}
    meta: dict = field(default_factory=dict)  # extra keys stored in every checkpoint
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)
    train_mode: Callable[[], None] | None = None
    save_optimizer: bool = False  # also store the optimizer state in every <e>.pth.tar (the state file always has it)
    progress: bool = True
    tensorboard: Path | None = None  # a folder for TensorBoard scalars, one run per phase (<dir>/<name>)
    start_epoch: int = 0
    best_acc1: float = 0.0
    history: list[dict] = field(default_factory=list)

    @property
    def state_file(self) -> Path:
        return self.out / phase_files(self.name)[0]

    def try_resume(self) -> bool:
        """Load the newest complete epoch state if one exists; True when something was resumed."""
        if not self.state_file.is_file():
            return False
        state = load_checkpoint(self.state_file, "--resume")
        where = f"--resume: {self.state_file}"
        try:
            sd = state_dict_of(state)
            check_fits(self.model, sd, self.arch, where)
            self.model.load_state_dict(sd)
            for key, module in self.extra_modules.items():
                module.load_state_dict(state[key])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.plateau is not None and state.get("plateau"):
                self.plateau.load_state_dict(state["plateau"])
            if self.tracker is not None:
                self.tracker.load_state_dict(state["weight_distance"])
            self.start_epoch = int(state["epoch"])
            self.best_acc1 = float(state["best_acc1"])
            self.history = list(state["history"])
        except KeyError as exc:
            raise UserError(f"{where} is damaged: it has no {exc}; remove it to restart the run, or --overwrite") \
                from None
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"{where} is damaged ({first_line(exc)}); remove it to restart the run, or "
                            "--overwrite") from None
        if not 0 <= self.start_epoch <= self.epochs:
            raise UserError(f"{where} is after epoch {self.start_epoch}, outside 0..{self.epochs}")
        log.info("%s: resumed after epoch %d of %d", self.name, self.start_epoch, self.epochs)
        return True

    def run(self) -> list[dict]:
        if self.start_epoch == 0 and 0 in self.checkpoints:
            self._save_checkpoint(0)
        elif self.start_epoch in self.checkpoints and not checkpoint_path(self.out, self.start_epoch).is_file():
            self._save_checkpoint(self.start_epoch)  # lost since it was written: the resumed model is that epoch's
        if self.start_epoch == 0 and self.tracker is not None:
            self._save_weight_diff()
        writer = self._tensorboard() if self.ctx.is_main else None
        bar = progress(total=self.epochs, desc=self.name, initial=self.start_epoch,
                       enabled=self.ctx.is_main and self.progress)
        try:
            for epoch in range(self.start_epoch + 1, self.epochs + 1):
                row = self._one_epoch(epoch)
                bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k != "epoch"})
                bar.update()
                if writer is not None:
                    self._log_scalars(writer, row)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return self.history

    def _tensorboard(self):
        if self.tensorboard is None:
            return None
        return summary_writer_class()(log_dir=str(Path(self.tensorboard) / self.name))

    def _log_scalars(self, writer, row: dict) -> None:
        """The epoch's figures as TensorBoard scalars: loss, accuracies, learning rate, weight distances."""
        epoch = row["epoch"]
        for key, value in row.items():
            if key not in ("epoch", "train_time_s") and isinstance(value, (int, float)):
                writer.add_scalar(f"{self.name}/{key}", value, epoch)
        if self.tracker is not None:
            column = self.tracker.table[:, epoch]
            for layer, value in zip(self.tracker.layers, column):
                if math.isfinite(value):
                    writer.add_scalar(f"weight_distance/{layer}", value, epoch)
        writer.flush()

    def _one_epoch(self, epoch: int) -> dict:
        torch.manual_seed(derive_seed(self.seed, epoch, self.ctx.rank))  # dropout etc.
        self.loader.sampler.set_epoch(epoch)
        if hasattr(self.loader.dataset, "set_epoch"):
            self.loader.dataset.set_epoch(epoch)
        if self.lr_at is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        tic = time.time()
        if self.train_mode is not None:
            self.train_mode()
        else:
            self.model.train()
        row = {"epoch": epoch, "lr": lr}
        row.update(train_one_epoch(self.step_fn, self.loader, self.optimizer, self.device, self.tracker,
                                   desc=f"{self.name} {epoch}", show=self.ctx.is_main))
        row["train_time_s"] = time.time() - tic
        if not math.isfinite(row["loss"]):
            raise UserError(f"{self.name}: training diverged in epoch {epoch} (loss {row['loss']}); nothing of "
                            f"this epoch was saved — lower --lr and rerun with --resume")
        if self.validate is not None:
            row.update(self.validate())
        if "val_acc1" in row:
            self.best_acc1 = max(self.best_acc1, row["val_acc1"])
        if self.plateau is not None:
            self.plateau.step(row.get("val_loss", row["loss"]))
        if self.tracker is not None:
            self.tracker.end_epoch()
        self.history.append(row)
        if self.ctx.is_main:
            if epoch in self.checkpoints:
                self._save_checkpoint(epoch)
            if self.tracker is not None:
                self._save_weight_diff()
            self._save_state(epoch)
            self._save_log()
            proved(self.out)  # an epoch is saved: a run that --overwrite replaced may go
        log.debug("%s epoch %d: %s", self.name, epoch, row)
        return row

    def checkpoint_state(self, epoch: int, optimizer: bool | None = None) -> dict:
        """A checkpoint (docs/method.md §4: epoch, state_dict, best_acc1; the optimizer state with ``--save-optimizer``)."""
        state = {"epoch": epoch, "state_dict": self.model.state_dict(), "best_acc1": self.best_acc1,
                 "arch": self.arch, **self.meta, **{key: module.state_dict() for key, module in self.extra_modules.items()}}
        if self.save_optimizer if optimizer is None else optimizer:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def _save_checkpoint(self, epoch: int) -> None:
        if self.ctx.is_main:
            save_checkpoint(checkpoint_path(self.out, epoch), self.checkpoint_state(epoch))

    def _save_weight_diff(self) -> None:
        if self.ctx.is_main:
            save_npy(self.out / "weight_diff.npy", self.tracker.table)

    def _save_state(self, epoch: int) -> None:
        state = self.checkpoint_state(epoch, optimizer=True)
        state.update(history=self.history,
                     plateau=self.plateau.state_dict() if self.plateau is not None else None,
                     weight_distance=self.tracker.state_dict() if self.tracker is not None else None)
        save_checkpoint(self.state_file, state)

    def _save_log(self) -> None:
        write_json(self.out / phase_files(self.name)[1], self.history)
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        write_text(self.out / phase_files(self.name)[2], buf.getvalue())

