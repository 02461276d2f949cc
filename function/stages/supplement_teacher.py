"""Supplement: a teacher trained from scratch with heavy augmentation (docs/method.md §1 supplement).

    python supplement/train_teacher.py --arch vgg16 --data ROOT --split train --val-split val --out runs/teacher_heavy

This is ``train_net/train_net.py`` with the settings of the original's ``train_net_supplement.py`` run with
``--mode _augment`` (its default mode, ``_without_augment``, trains on resized images only): ``--augment heavy``
(256×256 resize, random crop, horizontal and vertical flips, rotation ±30°,
``ColorJitter(brightness=1, contrast=1, saturation=1, hue=0.5)``), ``--weight-decay 5e-4``, ``--lr 0.01``
log-spaced down one decade over ``--epochs 150`` (the original's default; the teacher that its
``distillation_supplement.py`` loads was trained 800 epochs: ``--epochs 800``), from scratch — so the line above
is exactly ``train_net.py --augment heavy --weight-decay 5e-4 --lr 0.01 --epochs 150 ...``; every train_net flag
works and may override them.  The result is an ordinary train_net run, to pass to ``--teacher_checkpoint``.
"""
from __future__ import annotations

from kdq.function.cli import run
from kdq.function.train.options import with_defaults

HEAVY_TEACHER_DEFAULTS = {"augment": "heavy", "weight_decay": 5e-4, "lr": 0.01, "lr_schedule": "logspace",
                          "epochs": 150}

get_args_parser, main = with_defaults("train_net", __doc__.split("\n\n")[0], **HEAVY_TEACHER_DEFAULTS)


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
