"""Start-up shared by the training stages (train_net, distillation, supplement): common flags,
dataset splits, distributed init, seeding and the run folder."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kdq.function.cli import UserError, finite_float, load_script, positive_float, positive_int
from kdq.function.data.folder import MaskedImageFolder, SeededTransform, dataset_kind
from kdq.function.data.transforms import AUGMENT_CHOICES, TRAIN_TRANSFORMS, eval_transform, resolve_augment
from kdq.function.io.rundir import RunRecord, check_out_apart, check_resume_settings, open_run, read_run_json
from kdq.function.runtime import init_distributed, seed_everything, set_deterministic
from kdq.function.train.engine import eval_loader, train_loader
from kdq.function.train.schedules import LR_SCHEDULES
from kdq.models import ArchInfo

log = logging.getLogger(__name__)


def add_common_training_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train_net and distillation: data, run folder, runtime."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", type=Path, required=True, help="dataset root (<root>/<split>/<class>/<image>)")
    g.add_argument("--split", default="train", help="training split")
    g.add_argument("--val-split", default="val", help="validation split ('none' to skip validation)")
    g.add_argument("--augment", choices=AUGMENT_CHOICES, default="auto",
                   help="training transform: standard (square resize to 256 for 224 px, random crop, h-flip), "
                        "heavy (the supplement's), none (resize to S×S only); auto = the original code's choice "
                        "for the dataset (from its dataset.json): none for CUB, standard for VOC, ILSVRC and "
                        "the embedded data")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    r = parser.add_argument_group("run")
    r.add_argument("--out", type=Path, required=True, help="run folder to write")
    r.add_argument("--checkpoints", nargs="+", default=["paper"], metavar="E",
                   help="epochs to save as <e>.pth.tar, or 'paper' for SPEC's schedule scaled to --epochs")
    r.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun sets the local GPU)")
    r.add_argument("--deterministic", action="store_true", help="use deterministic algorithms (slower on CUDA)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    r.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")


def add_sgd_args(group: argparse._ArgumentGroup, schedule: str, lr: float, lr_help: str = "",
                 batch_help: str = "global batch size (over all ranks)", scope: str = "") -> None:
    """--lr (default ``lr``), --lr-schedule (default ``schedule``), --lr-down, --batch-size, --momentum,
    --weight-decay with SPEC §1 defaults."""
    group.add_argument("--lr", type=positive_float, default=lr, help="learning rate (of the first epoch)" + lr_help)
    group.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=schedule,
                       help="logspace: log-spaced per epoch from --lr down to --lr/10^(--lr-down) (the original's "
                            "--logspace); constant: --lr throughout")
    group.add_argument("--lr-down", type=positive_float, default=1.0, metavar="DECADES",
                       help="decades the logspace schedule falls over the run")
    group.add_argument("--batch-size", type=positive_int, default=64, help=batch_help)
    group.add_argument("--momentum", type=finite_float, default=0.9, help=f"SGD momentum{scope}")
    group.add_argument("--weight-decay", type=finite_float, default=1e-4, help=f"SGD weight decay{scope}")


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
    ctx, device = init_distributed(args.device)
    set_deterministic(args.deterministic)
    resume = open_run(args.out, stage, args, ctx, device, lambda: check_resume_settings(args.out, args, resolved))
    if resume and read_run_json(args.out).get("status") == "complete":
        log.info("%s already holds a complete run; nothing to do", args.out)
        return ctx, device, None
    record = RunRecord(args.out, stage, args, {"world_size": ctx.world_size}, resolved)
    seed_everything(args.seed)
    return ctx, device, record


def with_defaults(script: str, description: str, **defaults):
    """``(get_args_parser, main)`` of the stage ``script`` with some defaults changed: a thin entry point
    (``supplement/``) whose every flag is the stage's own and may still be overridden."""
    stage = load_script(script)

    def get_args_parser() -> argparse.ArgumentParser:
        parser = stage.get_args_parser()
        parser.description = description
        parser.set_defaults(**defaults)
        return parser

    return get_args_parser, stage.main
