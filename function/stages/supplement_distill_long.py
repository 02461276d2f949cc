"""Supplement: the long distillation schedule (400 epochs, checkpoints extended by docs/method.md §1).

    python supplement/distill_long.py --teacher_checkpoint runs/teacher_heavy/800.pth.tar --teacher-arch vgg16 \
        --arch vgg16 --layer conv --data ROOT --split train --val-split val --out runs/distil_conv_long

This is ``distillation/distillation.py`` with the defaults of the original's ``distillation_supplement.py``:
``--epochs 400``, ``--lr 1e-3`` constant (``--lr-schedule constant``), ``--weight-decay 5e-4`` and no augmentation
(``--augment none``: resize to S×S only); ``--checkpoints paper`` (the default) then saves
``0 2 5 10 15 20 25 30 40 50 70 90 110 130 150 170 190 240 280 320 360 400``.  Every distillation flag works and
may override them.  The original compares the 400-epoch student with a 150-epoch label net: the metrics stage
measures each net on its own schedule.  The original's default teacher is such a VGG-19 trained 800 epochs
(``supplement/train_teacher.py --epochs 800``); the original saves only the last checkpoint unless ``--save_per_epoch``.
"""
from __future__ import annotations

from kdq.function.cli import run
from kdq.function.train.options import with_defaults

LONG_DEFAULTS = {"epochs": 400, "lr": 1e-3, "lr_schedule": "constant", "weight_decay": 5e-4, "augment": "none"}

get_args_parser, main = with_defaults("distillation", __doc__.split("\n\n")[0], **LONG_DEFAULTS)


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
