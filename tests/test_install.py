"""The package as a user installs it: ``pip install .`` (not editable) gives the console commands of
``kdq.function.stages.COMMANDS`` and every stage runs from outside the repository (no stage is loaded from a
checkout's file)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kdq.function.stages import COMMANDS, stage
from tests.helpers import ROOT


def test_console_commands_are_the_stages():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {command: f"kdq.function.stages.{name}:cli" for name, (command, _) in COMMANDS.items()}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_stage_module_has_the_three_entry_points(name):
    module = stage(name)
    assert callable(module.get_args_parser) and callable(module.main) and callable(module.cli)
    script = COMMANDS[name][1]
    if script:  # the design card's path is a shim that runs this very module
        assert f"from kdq.function.stages.{name} import cli" in (ROOT / script).read_text()


def _not_package_files(folder: str, names: list[str]) -> set[str]:
    """What a copy of the checkout for a build leaves out: git, venvs, outputs (top level) and caches."""
    top = {".git", ".venv", "build", "runs", "data"} if Path(folder) == ROOT else set()
    return {n for n in names if n in top or n in ("__pycache__", ".pytest_cache") or n.endswith(".egg-info")}


def _run(argv, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    return done


@pytest.mark.slow
def test_a_non_editable_install_runs_the_stages_outside_the_repository(tmp_path):
    """Build the wheel, install it into a fresh prefix (no dependencies: torch comes from this venv) and run
    kdq-data, kdq-train-net and ``python -m`` there, from a folder outside the checkout."""
    wheels, prefix, work, src = tmp_path / "wheels", tmp_path / "prefix", tmp_path / "work", tmp_path / "src"
    work.mkdir()
    # a copy of the checkout's package files, so that the build's own folders (build/, *.egg-info) land there
    shutil.copytree(ROOT, src, ignore=_not_package_files)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, src],
         work, env)
    wheel = next(wheels.glob("kdq-*.whl"))
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", prefix, wheel], work, env)
    # the wheel's copy of kdq, never the checkout (PYTHONPATH comes before the editable install's finder)
    env = {**env, "PYTHONPATH": str(prefix), "OMP_NUM_THREADS": "1"}
    where = _run([sys.executable, "-c", "import kdq; print(kdq.__file__)"], work, env).stdout.strip()
    assert Path(where).is_relative_to(prefix), where
    bin_dir = prefix / "bin"
    for command, _ in COMMANDS.values():
        assert (bin_dir / command).is_file(), command
    assert _run([bin_dir / "kdq-sigma", "--help"], work, env).stdout.startswith("usage: kdq-sigma")
    _run([bin_dir / "kdq-data", "--out", "data", "--num-classes", "2", "--image-size", "32", "--teacher-per-class",
          "2", "--train-per-class", "3", "--val-per-class", "2"], work, env)
    _run([bin_dir / "kdq-train-net", "--arch", "vgg_tiny", "--data", "data", "--epochs", "1", "--checkpoints", "all",
          "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", "runs/label"], work, env)
    run = work / "runs" / "label"
    assert (run / "0.pth.tar").is_file() and (run / "1.pth.tar").is_file()
    assert '"status": "complete"' in (run / "run.json").read_text()
    help_text = _run([sys.executable, "-m", "kdq.function.stages.find_knowledge", "--help"], work, env).stdout
    assert "--label-sigma" in help_text
