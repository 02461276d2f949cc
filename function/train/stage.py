"""Start-up shared by the training stages (train_net, distillation, supplement): dataset splits and loaders,
distributed init, seeding and the run folder (their flags are in :mod:`kdq.function.train.options`)."""
from __future__ import annotations

import logging
import os

from kdq.function.cli import UserError, env_rank
from kdq.function.data.folder import MaskedImageFolder, SeededTransform
from kdq.function.data.layout import dataset_kind
from kdq.function.data.transforms import TRAIN_TRANSFORMS, eval_transform, resolve_augment
from kdq.function.io.rundir import RunRecord, check_out_apart, check_resume_settings, open_run, read_run_json
from kdq.function.runtime import init_distributed, seed_everything, set_deterministic
from kdq.function.train.engine import eval_loader, summary_writer_class, train_loader
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


def check_splits(args, *splits: MaskedImageFolder | None) -> None:
    """Decode every image of the splits once, the last check before a training stage writes anything: a damaged
    file is one line naming it, not a traceback in the middle of an epoch."""
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
                      lambda: check_resume_settings(args.out, args, resolved, growable=growable))
    previous = read_run_json(args.out) if resume else {}
    before = previous.get("settings", {}).get("epochs")
    if resume and previous.get("status") == "complete" and before == args.epochs:
        log.info("%s already holds a complete run; nothing to do", args.out)
        return ctx, device, None
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
