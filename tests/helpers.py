"""What the tests share: the repository root, running a script in-process, reading its one error line, and
small fabricated inputs.  Tests import this module; ``conftest.py`` holds only fixtures."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from kdq.function.cli import run
from kdq.function.stages import stage

ROOT: Path = Path(__file__).resolve().parents[1]  # the repository root


def load_script(relpath: str):
    """The stage module behind a design-card script path (``"train_net/train_net.py"``) or a stage name."""
    return stage(relpath)


def load_file(relpath: str) -> ModuleType:
    """A script outside the package (``"bench/validate.py"``) imported by its path, without running its
    ``__main__``; the same path gives the same module."""
    path = ROOT / relpath
    name = "kdq_bench_" + "_".join(Path(relpath).with_suffix("").parts)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_script(relpath: str, *argv) -> int:
    """Run a stage's ``main`` (by its script path or name; a bench script by its path) through ``kdq.function.cli.run`` in-process; returns the
    exit status."""
    module = load_file(relpath) if relpath.startswith("bench/") else stage(relpath)
    return run(module.get_args_parser, module.main, [str(a) for a in argv])


def one_error_line(capsys) -> str:
    """The single line a failed script wrote on stderr (asserting that it wrote exactly one)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]
