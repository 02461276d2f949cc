"""Supplement: a teacher trained from scratch with heavy augmentation (SPEC §1 supplement).

    python supplement/train_teacher.py --arch vgg16 --data ROOT --split train --val-split val --out runs/teacher_heavy

This is ``train_net/train_net.py`` with two defaults changed — ``--augment heavy`` (random crop, horizontal
and vertical flips, rotation ±30°, strong colour jitter) and ``--weight-decay 5e-4`` — so the line above is
exactly ``train_net.py --augment heavy --weight-decay 5e-4 ...``; every train_net flag works and may
override them.  The result is an ordinary train_net run, to pass to ``--teacher_checkpoint``.
"""
from __future__ import annotations

from kdq.function.cli import run
from kdq.function.train.stage import with_defaults

HEAVY_TEACHER_DEFAULTS = {"augment": "heavy", "weight_decay": 5e-4}

get_args_parser, main = with_defaults("train_net/train_net.py", __doc__.split("\n\n")[0], **HEAVY_TEACHER_DEFAULTS)

if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
