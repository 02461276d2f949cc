"""Supplement: train a teacher from scratch with heavy augmentation (the design card's script path).

The stage lives in :mod:`kdq.function.stages.supplement_teacher`; this script, the console command and
``python -m kdq.function.stages.supplement_teacher`` are the same program (``--help`` explains every flag).
"""
from kdq.function.stages.supplement_teacher import cli

if __name__ == "__main__":
    raise SystemExit(cli())
