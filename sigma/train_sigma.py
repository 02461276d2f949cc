"""Stage 3: fit the per-pixel noise scale σ of every image at every checkpoint (the design card's script path).

The stage lives in :mod:`kdq.function.stages.train_sigma`; this script, the console command and
``python -m kdq.function.stages.train_sigma`` are the same program (``--help`` explains every flag).
"""
from kdq.function.stages.train_sigma import cli

if __name__ == "__main__":
    raise SystemExit(cli())
