"""Command-line flags shared by the training stages (train_net, distillation, and the supplement's entry points,
which are those stages with other defaults).  Nothing here imports torch, so ``--help`` stays fast."""
from __future__ import annotations

import argparse
from pathlib import Path

from kdq.function.cli import (add_device_arg, nonnegative_float, nonnegative_int, positive_float,
                             positive_int, seed)
from kdq.function.train.schedules import LR_SCHEDULES

AUGMENT_CHOICES = ("auto", "standard", "heavy", "none")
TEACHER_FORMATS = ("kdq", "torchvision")  # distillation --teacher-format: how the teacher's state dict is keyed


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
    g.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader worker processes")
    r = parser.add_argument_group("run")
    r.add_argument("--out", type=Path, required=True, help="run folder to write")
    r.add_argument("--checkpoints", nargs="+", default=["paper"], metavar="E",
                   help="epochs to save as <e>.pth.tar: integers, 'paper' (0 2 5 10 ... 150, scaled to --epochs) "
                        "or 'all'")
    r.add_argument("--save-optimizer", action="store_true",
                   help="also store the optimizer state in every <e>.pth.tar (≈ doubles a VGG-16 checkpoint to "
                        "1.1 GB); --resume does not need it: it reads the run's own <name>_state.pth.tar")
    r.add_argument("--seed", type=seed, default=0, help="seed of initialisation, shuffling and augmentation")
    add_device_arg(r)
    r.add_argument("--deterministic", action="store_true", help="use deterministic algorithms (slower on CUDA)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    r.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")
    r.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                   help="also log loss, accuracy, learning rate and the weight distances per epoch as TensorBoard "
                        "scalars in DIR (needs the optional 'tensorboard' package)")
    r.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (they are plain lines anyway when stderr is not a terminal)")


def add_sgd_args(group: argparse._ArgumentGroup, schedule: str, lr: float, lr_help: str = "",
                 batch_help: str = "global batch size (over all ranks)", scope: str = "") -> None:
    """--lr (default ``lr``), --lr-schedule (default ``schedule``), --lr-down, --batch-size, --momentum,
    --weight-decay with docs/method.md §1 defaults."""
    group.add_argument("--lr", type=positive_float, default=lr, help="learning rate (of the first epoch)" + lr_help)
    group.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=schedule,
                       help="logspace: log-spaced per epoch from --lr down to --lr/10^(--lr-down) (the original's "
                            "--logspace); constant: --lr throughout")
    group.add_argument("--lr-down", type=positive_float, default=1.0, metavar="DECADES",
                       help="decades the logspace schedule falls over the run")
    group.add_argument("--batch-size", type=positive_int, default=64, help=batch_help)
    group.add_argument("--momentum", type=nonnegative_float, default=0.9, help=f"SGD momentum{scope}")
    group.add_argument("--weight-decay", type=nonnegative_float, default=1e-4, help=f"SGD weight decay{scope}")


def with_defaults(name: str, description: str, **defaults):
    """``(get_args_parser, main)`` of the stage ``name`` (``"train_net"``) with some defaults changed: a thin entry
    point (the supplement's) whose every flag is the stage's own and may still be overridden."""
    from kdq.function.stages import stage as stage_module

    stage = stage_module(name)

    def get_args_parser() -> argparse.ArgumentParser:
        parser = stage.get_args_parser()
        parser.description = description
        parser.set_defaults(**defaults)
        return parser

    return get_args_parser, stage.main
