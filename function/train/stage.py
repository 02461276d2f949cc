"""Start-up shared by the training stages (train_net, distillation, supplement): dataset splits and loaders,
distributed init, the run folder and the open run (:class:`TrainingRun`; their flags are in
:mod:`kdq.function.train.options`)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdq.function.cli import UserError, env_rank
from kdq.function.data.folder import MaskedImageFolder, SeededTransform
from kdq.function.data.layout import dataset_kind
from kdq.function.data.modality import dataset_modality
from kdq.function.data.transforms import TRAIN_TRANSFORMS, eval_transform, resolve_augment
from kdq.function.io.checkpoint import checkpoint_path
from kdq.function.io.rundir import RunRecord, check_out_apart, check_resume_settings, open_run, read_run_json
from kdq.function.runtime import Dist, init_distributed, seed_everything, set_deterministic
from kdq.function.train.engine import eval_loader, summary_writer_class, train_loader
from kdq.function.train.schedules import lr_schedule, parse_epochs
from kdq.models import ArchInfo

log = logging.getLogger(__name__)


def resolved_augment(args) -> str:
    """The training transform ``--augment`` names, with ``auto`` resolved by the dataset's kind (tokens and points:
    ``none``, the only one they have)."""
    modality = dataset_modality(args.data)
    if modality != "image":
        if args.augment not in ("auto", "none"):
            raise UserError(f"--augment {args.augment}: {modality} data have no augmentation (auto or none)")
        return "none"
    return resolve_augment(args.augment, dataset_kind(args.data))


def study_data(args, info: ArchInfo):
    """The study's modality (``--modality``, checked against the dataset and the architecture), the architecture
    with the builder options the training split fixes (a text net's vocabulary size and maximum length), and the
    ``--split`` and ``--val-split`` splits (None for ``none``)."""
    from dataclasses import replace

    from kdq.function.data.modality import MODALITIES, resolve_modality

    info = with_data_modality(info, args.data)
    modality = resolve_modality(getattr(args, "modality", None), args.data, info.modality, info.name)
    if modality == "image":
        return modality, info, *load_splits(args, info.input_size)
    kind = MODALITIES[modality]
    train = kind.read(args.data, args.split)
    val = None
    if args.val_split != "none":
        val = kind.read(args.data, args.val_split, train.classes, "--val-split",
                        vocab=getattr(train, "vocab", None))
    options = kind.options(train)
    if options:
        info = replace(info, options={**info.options, **options},
                       input_size=options.get("max_length", info.input_size))
    return modality, info, train, val


def data_identity(dataset) -> dict[str, str]:
    """What a training run records of its data beyond the folder (run.json's settings): a text split's
    vocabulary as ``vocab_sha256`` (a later stage's dataset must map words to the same ids); nothing for images
    and points."""
    from kdq.function.data.modality import vocab_digest

    vocab = getattr(dataset, "vocab", None)
    return {"vocab_sha256": vocab_digest(vocab)} if vocab is not None else {}


def with_data_modality(info: ArchInfo, root) -> ArchInfo:
    """A ``package.module:factory`` architecture takes the dataset's modality (a text model's noise goes to the
    output of its submodule ``embed``, as the registry's text nets'); registry, torchvision and timm nets keep their
    own."""
    from dataclasses import replace

    from kdq.models.external import TIMM, TORCHVISION, is_external

    if not is_external(info.name) or info.name.startswith((TORCHVISION, TIMM)):
        return info
    modality = dataset_modality(root)
    return replace(info, modality=modality, inject="embed" if modality == "text" else None)


def load_splits(args, size: int) -> tuple[MaskedImageFolder, MaskedImageFolder | None]:
    """The ``--split`` training split and the ``--val-split`` one (None for ``none``) with its eval transform."""
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


def checked_checkpoints(args) -> list[int]:
    """The epochs ``--checkpoints`` names for ``--epochs`` (docs/method.md §4), or one UserError."""
    try:
        return parse_epochs(args.checkpoints, args.epochs)
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
        if isinstance(split, MaskedImageFolder):  # tokens and points are checked as they are read
            split.check_files(workers=min(8, os.cpu_count() or 1),
                              show_progress=getattr(args, "progress", True) and env_rank() == 0)


def make_loaders(args, train_set: MaskedImageFolder, val_set: MaskedImageFolder | None, info: ArchInfo, ctx,
                 device):
    """The training loader (augmentation per ``--augment``, seeded per sample; global batch ``--batch-size``)
    and the validation loader (None without a val split)."""
    if info.modality != "image":
        from kdq.function.data.modality import Pairs

        data, val_set = Pairs(train_set), (Pairs(val_set) if val_set else None)
    else:
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




@dataclass(frozen=True)
class TrainingRun:
    """A training stage's open run: its settings, distributed context, device and run.json's record.

    ``record`` is None when ``complete``: ``--resume`` found the run folder holding the complete run, and there is
    nothing to do.  :meth:`seed` seeds every generator; the stage calls it right before it builds its model."""
    args: Any
    ctx: Dist
    device: torch.device
    record: RunRecord | None

    @property
    def complete(self) -> bool:
        """True when the folder already holds this complete run (nothing to train, nothing written)."""
        return self.record is None

    def seed(self) -> None:
        """Seed ``random``, NumPy and torch from ``--seed``: called right before the model is built, so the same
        ``--arch`` and ``--seed`` give the same initialisation in train_net and distillation."""
        seed_everything(self.args.seed)


def already_complete(args, previous: dict) -> bool:
    """``--resume`` of a run whose run.json says complete at these ``--epochs``: True when every file it records is
    there (nothing to do); a lost one makes the run incomplete again (a warning; it is resumed to write it again)."""
    if previous.get("status") != "complete" or previous.get("settings", {}).get("epochs") != args.epochs:
        return False
    lost = lost_files(args.out, previous)
    if not lost:
        log.info("%s already holds a complete run; nothing to do", args.out)
        return True
    log.warning("%s: run.json says complete but %s %s missing: the run is incomplete; resuming it to write "
                "%s again", args.out, ", ".join(p.name for p in lost), "is" if len(lost) == 1 else "are",
                "it" if len(lost) == 1 else "them")
    return False


def extension_notes(args, previous: dict) -> list[str]:
    """run.json's ``extensions``: the earlier notes and, when this ``--resume`` raises ``--epochs``, a note (also
    logged as a warning) that the learning-rate schedule of the first epochs was that of the shorter run."""
    extensions = list(previous.get("extensions") or [])
    before = previous.get("settings", {}).get("epochs")
    if isinstance(before, int) and before < args.epochs:
        note = (f"extended from {before} to {args.epochs} epochs: epochs {before + 1}..{args.epochs} follow the "
                f"{args.lr_schedule} learning-rate schedule of a {args.epochs}-epoch run, epochs 1..{before} that "
                f"of a {before}-epoch run (a run made at {args.epochs} epochs from the start differs)")
        log.warning("%s: %s", args.out, note)
        extensions.append(note)
    return extensions


def setup(args, stage: str, resolved: dict | None = None) -> TrainingRun:
    """Shared start of a training stage: distributed init, deterministic mode, the output folder claimed (a resumed
    run's settings checked) and the run record; no seeding (:meth:`TrainingRun.seed`)."""
    check_out_apart(args.out, args)
    if getattr(args, "tensorboard", None) is not None:
        summary_writer_class()
    ctx, device = init_distributed(args.device)
    set_deterministic(args.deterministic)
    resume = open_run(args.out, stage, args, ctx, device,
                      lambda: (check_resume_settings(args.out, args, resolved),
                               check_lost(args.out)))
    previous = read_run_json(args.out) if resume else {}
    if resume and already_complete(args, previous):
        return TrainingRun(args, ctx, device, None)
    record = RunRecord(args.out, stage, args, {"world_size": ctx.world_size}, resolved)
    extensions = extension_notes(args, previous)
    if extensions:
        record.update(extensions=extensions)
    return TrainingRun(args, ctx, device, record)
