"""The entry points of kdq: each stage of the pipeline (and each data tool) is a module here with
``get_args_parser()``, ``main(args)`` and ``cli(argv)``.

They run three ways, all equivalent: the design card's script paths from a checkout (``python
train_net/train_net.py ...``: shims of a few lines), the console commands that ``pip install`` makes
(``kdq-train-net ...``, see :data:`COMMANDS`), and ``python -m kdq.function.stages.train_net ...``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# module (below kdq.function.stages) → (console command, the design card's script path in a checkout or None)
COMMANDS = {
    "train_net": ("kdq-train-net", "train_net/train_net.py"),
    "distillation": ("kdq-distill", "distillation/distillation.py"),
    "train_sigma": ("kdq-sigma", "sigma/train_sigma.py"),
    "find_knowledge": ("kdq-metrics", "sigma/find_knowledge_new.py"),
    "supplement_teacher": ("kdq-supplement-teacher", "supplement/train_teacher.py"),
    "supplement_distill_long": ("kdq-supplement-distill", "supplement/distill_long.py"),
    "make_dataset": ("kdq-data", None),
    "prepare_data": ("kdq-prepare-data", None),
    "summarize_runs": ("kdq-summarize", None),
    "weight_distance": ("kdq-weight-distance", None),
}
SCRIPTS = {script: name for name, (_, script) in COMMANDS.items() if script}  # script path → module name


def stage(name: str) -> ModuleType:
    """The module of the stage ``name`` (``"train_net"``), or of a design-card script path
    (``"train_net/train_net.py"``)."""
    name = SCRIPTS.get(name, name)
    if name not in COMMANDS:
        raise KeyError(f"no stage {name!r}; the stages: {', '.join(COMMANDS)}")
    return importlib.import_module(f"{__name__}.{name}")
