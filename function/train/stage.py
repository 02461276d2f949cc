"""Start-up shared by the training stages (train_net, distillation, supplement): dataset splits and loaders,
distributed init, seeding and the run folder (their flags are in :mod:`kdq.function.train.options`)."""
from __future__ import annotations

import logging

from kdq.function.cli import UserError
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
        val = MaskedImageFolder(args.data, args.val_split, transform=eval_transform(size), classes=train.classes)
    return train, val


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


def setup(args, stage: str, resolved: dict | None = None):
    """Shared start of a training stage: distributed init, seeding, output folder, run record."""
    check_out_apart(args.out, args)
    if getattr(args, "tensorboard", None) is not None:
        summary_writer_class()
    ctx, device = init_distributed(args.device)
    set_deterministic(args.deterministic)
    resume = open_run(args.out, stage, args, ctx, device, lambda: check_resume_settings(args.out, args, resolved))
    if resume and read_run_json(args.out).get("status") == "complete":
        log.info("%s already holds a complete run; nothing to do", args.out)
        return ctx, device, None
    record = RunRecord(args.out, stage, args, {"world_size": ctx.world_size}, resolved)
    seed_everything(args.seed)
    return ctx, device, record
