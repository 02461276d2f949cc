"""Stage 4: the metrics that compare the label net and the distil net (the design card's script path).

The stage lives in :mod:`kdq.function.stages.find_knowledge`; this script, the console command and
``python -m kdq.function.stages.find_knowledge`` are the same program (``--help`` explains every flag).
"""
from kdq.function.stages.find_knowledge import cli

if __name__ == "__main__":
    raise SystemExit(cli())
