"""Stage 1: train a teacher or a label net (the design card's script path).

The stage lives in :mod:`kdq.function.stages.train_net`; this script, the console command and
``python -m kdq.function.stages.train_net`` are the same program (``--help`` explains every flag).
"""
from kdq.function.stages.train_net import cli

if __name__ == "__main__":
    raise SystemExit(cli())
