"""Start-up shared by the training stages (train_net, distillation, supplement): dataset splits and loaders,
distributed init, seeding and the run folder (their flags are in :mod:`kdq.function.train.options`)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from kdq.function.cli import UserError, env_rank
from kdq.function.data.folder import MaskedImageFolder, SeededTransform
from kdq.function.data.layout import dataset_kind
from kdq.function.data.transforms import TRAIN_TRANSFORMS, eval_transform, resolve_augment
from kdq.function.io.checkpoint import checkpoint_path
from kdq.function.io.rundir import RunRecord, check_out_apart, check_resume_settings, open_run, read_run_json
from kdq.function.runtime import init_distributed, seed_everything, set_deterministic
from kdq.function.train.engine import eval_loader, summary_writer_class, train_loader
from kdq.function.train.schedules import lr_schedule
from kdq.models import ArchInfo

log = logging.getLogger(__name__)


def resolved_augment(args) -> str:
    """The training transform ``--augment`` names, with ``auto`` resolved by the dataset's kind."""
    return resolve_augment(args.augment, dataset_kind(args.data))


def load_splits(args, size: int) -> tuple[MaskedImageFolder, MaskedImageFolder | None]:
    train = MaskedImageFolder(args.data, args.split)
    val = None
    if args.val_split != "none":
        val = MaskedImageFolder(args.data, args.val_split, transform=eval_transform(size), classes=train.classes,
                                split_flag="--val-split")
    return train, val


def check_dropout(dropout: float | None, info: ArchInfo) -> None:
    """``--dropout`` sets the dropout of a registry architecture's head; other architectures build their own."""
    if dropout is not None and not info.dropout:
        raise UserError(f"--dropout applies to registry architectures; {info.name} builds its own head")


def checked_lr_schedule(args):
    """The learning rate by epoch that ``--lr-schedule``, ``--lr``, ``--epochs`` and ``--lr-down`` give, computed
    before anything is written: a schedule whose rates are not positive floats is one UserError."""
    try:
        return lr_schedule(args.lr_schedule, args.lr, args.epochs, args.lr_down)
    except ValueError as exc:
        raise UserError(str(exc)) from None


WORKERS_PER_CORE = 8  # DataLoader worker processes that still make sense per CPU core (torch warns above 1)


def check_workers(workers: int) -> None:
    """``--workers``: each is a process holding a copy of the dataset object; far more than the machine's cores
    only fill its memory (and a huge number would try to start that many processes)."""
    limit = WORKERS_PER_CORE * (os.cpu_count() or 1)
    if workers > limit:
        raise UserError(f"--workers {workers}: more DataLoader processes than this machine can run "
                        f"({os.cpu_count() or 1} CPU core(s); at most {limit})")


def check_splits(args, *splits: MaskedImageFolder | None) -> None:
    """Decode every image of the splits once, the last check before a training stage writes anything: a damaged
    file is one line naming it, not a traceback in the middle of an epoch (``--workers`` is checked first)."""
    check_workers(args.workers)
    for split in splits:
        if split is not None:
            split.check_files(workers=min(8, os.cpu_count() or 1),
                              show_progress=getattr(args, "progress", True) and env_rank() == 0)


def make_loaders(args, train_set: MaskedImageFolder, val_set: MaskedImageFolder | None, info: ArchInfo, ctx,
                 device):
    """The training loader (augmentation per ``--augment``, seeded per sample; global batch ``--batch-size``)
    and the validation loader (None without a val split)."""
    transform = TRAIN_TRANSFORMS[resolved_augment(args)](info.input_size, info.train_resize)
    data = SeededTransform(train_set, transform, args.seed)
    try:
        loader = train_loader(data, args.batch_size, ctx, args.seed, args.workers, device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    val_loader = eval_loader(val_set, args.batch_size, ctx, args.workers, device) if val_set else None
    return loader, val_loader


def lost_files(out: Path, record: dict) -> list[Path]:
    """The files a training run's run.json records as written — its checkpoints ``<e>.pth.tar`` and distillation's
    final checkpoint — that are not in ``out`` (a complete run missing one is not complete)."""
    epochs = record.get("checkpoints")
    paths = [checkpoint_path(out, e) for e in (epochs if isinstance(epochs, list) else [])
             if isinstance(e, int) and not isinstance(e, bool)]
    final = record.get("final_checkpoint")
    if isinstance(final, str) and final:
        paths.append(out / final)
    return [p for p in paths if not p.is_file()]


def check_lost(out: Path) -> None:
    """``--resume`` of a complete run that has lost files its run.json records: the last epoch's checkpoint and the
    final one are made again from the resume state, an earlier checkpoint cannot be (a UserError naming it)."""
    record = read_run_json(out)
    if record.get("status") != "complete":
        return
    last = (record.get("settings") or {}).get("epochs")
    again = {checkpoint_path(out, last).name if isinstance(last, int) else None, record.get("final_checkpoint")}
    gone = [p.name for p in lost_files(out, record) if p.name not in again]
    if gone:
        raise UserError(f"--resume: {out} has lost {len(gone)} checkpoint(s) that its run.json records "
                        f"({', '.join(gone)}); only the last epoch's can be made again: restore them, or --overwrite "
                        "to train again")


GROWABLE = {"train_net": frozenset({"epochs"})}  # settings --resume may raise: extending a finished training


def setup(args, stage: str, resolved: dict | None = None):
    """Shared start of a training stage: distributed init, seeding, output folder, run record."""
    check_out_apart(args.out, args)
    if getattr(args, "tensorboard", None) is not None:
        summary_writer_class()
    ctx, device = init_distributed(args.device)
    set_deterministic(args.deterministic)
    growable = GROWABLE.get(stage, frozenset())
    resume = open_run(args.out, stage, args, ctx, device,
                      lambda: (check_resume_settings(args.out, args, resolved, growable=growable),
                               check_lost(args.out)))
    previous = read_run_json(args.out) if resume else {}
    before = previous.get("settings", {}).get("epochs")
    if resume and previous.get("status") == "complete" and before == args.epochs:
        lost = lost_files(args.out, previous)
        if not lost:
            log.info("%s already holds a complete run; nothing to do", args.out)
            return ctx, device, None
        log.warning("%s: run.json says complete but %s %s missing: the run is incomplete; resuming it to write "
                    "%s again", args.out, ", ".join(p.name for p in lost), "is" if len(lost) == 1 else "are",
                    "it" if len(lost) == 1 else "them")
    record = RunRecord(args.out, stage, args, {"world_size": ctx.world_size}, resolved)
    extensions = list(previous.get("extensions") or [])
    if resume and isinstance(before, int) and before < args.epochs:
        note = (f"extended from {before} to {args.epochs} epochs: epochs {before + 1}..{args.epochs} follow the "
                f"{args.lr_schedule} learning-rate schedule of a {args.epochs}-epoch run, epochs 1..{before} that "
                f"of a {before}-epoch run (a run made at {args.epochs} epochs from the start differs)")
        log.warning("%s: %s", args.out, note)
        extensions.append(note)
    if extensions:
        record.update(extensions=extensions)
    seed_everything(args.seed)
    return ctx, device, record
