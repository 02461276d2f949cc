"""Supplement: the long distillation (the design card's script path).

The stage lives in :mod:`kdq.function.stages.supplement_distill_long`; this script, the console command and
``python -m kdq.function.stages.supplement_distill_long`` are the same program (``--help`` explains every flag).
"""
from kdq.function.stages.supplement_distill_long import cli

if __name__ == "__main__":
    raise SystemExit(cli())
