"""What the tests share: the repository root, running a script in-process, reading its one error line, and
small fabricated inputs.  Tests import this module; ``conftest.py`` holds only fixtures."""
from __future__ import annotations

from pathlib import Path

from kdq.function.cli import REPO, load_script, run

ROOT: Path = REPO


def run_script(relpath: str, *argv) -> int:
    """Run a script's ``main`` through ``kdq.function.cli.run`` in-process; returns the exit status."""
    module = load_script(relpath)
    return run(module.get_args_parser, module.main, [str(a) for a in argv])


def one_error_line(capsys) -> str:
    """The single line a failed script wrote on stderr (asserting that it wrote exactly one)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]
