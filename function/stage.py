"""Start-up shared by the training stages (train_net, distillation, supplement): common flags,
dataset splits, distributed init, seeding and the run folder."""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

from .datasets import MaskedImageFolder, SeededTransform
from .engine import eval_loader, train_loader
from .rundir import RunRecord, check_out_apart, check_resume_settings, prepare_out, read_run_json
from .cli import UserError, finite_float, positive_float, positive_int
from .runtime import all_ok, init_distributed, seed_everything, set_deterministic
from .transforms import TRAIN_TRANSFORMS, eval_transform
from models import ArchInfo, arch_info

log = logging.getLogger("kdq")


def add_common_training_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train_net and distillation: data, run folder, runtime."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", type=Path, required=True, help="dataset root (<root>/<split>/<class>/<image>)")
    g.add_argument("--split", default="train", help="training split")
    g.add_argument("--val-split", default="val", help="validation split ('none' to skip validation)")
    g.add_argument("--augment", choices=sorted(TRAIN_TRANSFORMS), default="standard",
                   help="training transform: standard (resize, random crop, h-flip), heavy (supplement), none")
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


def add_sgd_args(group: argparse._ArgumentGroup, batch_help: str = "global batch size (over all ranks)",
                 scope: str = "") -> None:
    """--lr (log-spaced to lr/10), --batch-size, --momentum, --weight-decay with SPEC §1 defaults."""
    group.add_argument("--lr", type=positive_float, default=0.01,
                       help="first-epoch learning rate (log-spaced to lr/10)")
    group.add_argument("--batch-size", type=positive_int, default=64, help=batch_help)
    group.add_argument("--momentum", type=finite_float, default=0.9, help=f"SGD momentum{scope}")
    group.add_argument("--weight-decay", type=finite_float, default=1e-4, help=f"SGD weight decay{scope}")


def load_splits(args, size: int) -> tuple[MaskedImageFolder, MaskedImageFolder | None]:
    train = MaskedImageFolder(args.data, args.split)
    val = None
    if args.val_split != "none":
        val = MaskedImageFolder(args.data, args.val_split, transform=eval_transform(size), classes=train.classes)
    return train, val


def make_loaders(args, train_set: MaskedImageFolder, val_set: MaskedImageFolder | None, size: int, ctx, device):
    """The training loader (augmentation per ``--augment``, seeded per sample; global batch ``--batch-size``)
    and the validation loader (None without a val split)."""
    data = SeededTransform(train_set, TRAIN_TRANSFORMS[args.augment](size), args.seed)
    try:
        loader = train_loader(data, args.batch_size, ctx, args.seed, args.workers, device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    val_loader = eval_loader(val_set, args.batch_size, ctx, args.workers, device) if val_set else None
    return loader, val_loader


def arch_or_error(name: str, flag: str = "--arch") -> ArchInfo:
    """The registry entry of ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return arch_info(name)
    except KeyError as exc:
        raise UserError(f"{flag}: {exc}") from None


def setup(args, stage: str):
    """Shared start of a training stage: distributed init, seeding, output folder, run record."""
    check_out_apart(args.out, args)
    ctx, device = init_distributed(args.device)
    set_deterministic(args.deterministic)
    resume, error = args.resume, None
    if ctx.is_main:
        try:
            resume = prepare_out(args.out, args.resume, args.overwrite, stage)
            if resume:
                check_resume_settings(args.out, args)
        except UserError as exc:
            error = exc
    if not all_ok(error is None, device):
        raise error or UserError(f"{stage}: rank 0 refused --out {args.out}")
    if resume and read_run_json(args.out).get("status") == "complete":
        log.info("%s already holds a complete run; nothing to do", args.out)
        return ctx, device, None
    record = RunRecord(args.out, stage, args, {"world_size": ctx.world_size})
    seed_everything(args.seed)
    return ctx, device, record


def import_stage(path: str | Path):
    """Import a stage script (e.g. ``"train_net/train_net.py"``, relative to this repository, or an absolute
    path) as a module, so a thin entry point (``supplement/``) reuses its ``get_args_parser`` and ``main``."""
    path = Path(__file__).resolve().parents[1] / path
    name = f"kdq_stage_{path.parent.name}_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def with_defaults(script: str, description: str, **defaults):
    """``(get_args_parser, main)`` of the stage ``script`` with some defaults changed: a thin entry point
    (``supplement/``) whose every flag is the stage's own and may still be overridden."""
    stage = import_stage(script)

    def get_args_parser() -> argparse.ArgumentParser:
        parser = stage.get_args_parser()
        parser.description = description
        parser.set_defaults(**defaults)
        return parser

    return get_args_parser, stage.main
