"""Supplement: a teacher trained from scratch with heavy augmentation (SPEC §1 supplement).

    python supplement/train_teacher.py --arch vgg16 --data ROOT --split train --val-split val --out runs/teacher_heavy

This is ``train_net/train_net.py`` with two defaults changed — ``--augment heavy`` (random crop, horizontal
and vertical flips, rotation ±30°, strong colour jitter) and ``--weight-decay 5e-4`` — so the line above is
exactly ``train_net.py --augment heavy --weight-decay 5e-4 ...``; every train_net flag works and may
override them.  The result is an ordinary train_net run, to pass to ``--teacher_checkpoint``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from function.cli import run
from function.stage import import_stage

HEAVY_TEACHER_DEFAULTS = {"augment": "heavy", "weight_decay": 5e-4}

_train_net = import_stage(Path(__file__).resolve().parents[1] / "train_net/train_net.py")


def get_args_parser() -> argparse.ArgumentParser:
    parser = _train_net.get_args_parser()
    parser.description = __doc__.split("\n\n")[0]
    parser.set_defaults(**HEAVY_TEACHER_DEFAULTS)
    return parser


main = _train_net.main

if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
