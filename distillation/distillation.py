"""Stage 2: distil a student from a frozen teacher, then fine-tune its upper layers (the design card's script path).

The stage lives in :mod:`kdq.function.stages.distillation`; this script, the console command and
``python -m kdq.function.stages.distillation`` are the same program (``--help`` explains every flag).
"""
from kdq.function.stages.distillation import cli

if __name__ == "__main__":
    raise SystemExit(cli())
