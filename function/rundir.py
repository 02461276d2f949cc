"""Run folders: refuse to overwrite results, record what produced them (``run.json``)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .atomic import is_temp, remove_stale_temps, write_json
from .cli import UserError

RUN_JSON = "run.json"


def prepare_out(out: Path, resume: bool, overwrite: bool, stage: str, flag: str = "--out") -> bool:
    """Make ``out`` ready for a run of ``stage``. Returns True when an earlier run there should be resumed.

    A folder holding files is refused unless ``--resume`` (continue it: it must hold a run.json of the same
    stage) or ``--overwrite`` (remove a kdq run first; a folder that is not a kdq run is never removed).
    Temporary files (``.*.tmp``) that a killed run left at the top level never had their final name: they
    do not count as files and are removed once the folder is known to be this stage's.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag}: {out} exists and is not a directory")
    has_files = out.is_dir() and any(not is_temp(p) for p in out.iterdir())
    if not has_files:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        return False
    if resume:
        previous = read_run_json(out)
        if previous.get("stage") != stage:
            what = f"a {previous['stage']} run" if previous.get("stage") else f"files but no {RUN_JSON}"
            raise UserError(f"--resume: {out} holds {what}, not a {stage} run; use another {flag} or --overwrite")
        remove_stale_temps(out)
        return True
    if overwrite:
        if not (out / RUN_JSON).is_file():
            raise UserError(f"{flag}: {out} is not empty and holds no {RUN_JSON}; refusing to delete it "
                            "with --overwrite (remove it yourself)")
        shutil.rmtree(out)
        out.mkdir(parents=True)
        return False
    state = read_run_json(out).get("status", "unknown")
    raise UserError(f"{flag}: {out} already holds results (status: {state}); "
                    "pass --resume to continue it or --overwrite to replace it")


# Flags that change how a run executes but not what it computes: they may differ on --resume.
RUNTIME_SETTINGS = frozenset({"out", "resume", "overwrite", "debug", "device", "workers", "progress",
                              "no_progress", "log_interval", "batch_images", "sample_chunk", "compile",
                              "cudnn_benchmark", "channels_last", "deterministic"})


def check_resume_settings(out: Path, args: argparse.Namespace,
                          runtime: frozenset[str] = RUNTIME_SETTINGS) -> None:
    """Refuse to ``--resume`` a run made with other result-defining settings (``prepare_out`` has checked
    that it is a run of this stage): every recorded setting except the ``runtime`` ones must equal this
    invocation's; the error lists each difference."""
    previous = read_run_json(out)
    recorded = previous.get("settings", {})
    diffs = setting_diffs(previous, args, sorted(k for k in recorded if k not in runtime))
    if diffs:
        raise UserError(f"--resume: {out} was made with other settings ({'; '.join(diffs)}); "
                        "rerun with those or use another --out")


def setting_diffs(previous: dict[str, Any], args: argparse.Namespace, keys: Iterable[str]) -> list[str]:
    """``--flag: old → new`` for each of ``keys`` that the run.json ``previous`` records with another value than
    ``args`` has (values as they would be recorded: tuples are lists; paths compared as the folders they name,
    each relative to the working directory of its own command)."""
    old = previous.get("settings", {})
    new = json.loads(json.dumps(describe(args), default=str))
    paths = {k for k, v in vars(args).items() if isinstance(v, Path)}
    return [f"--{k.replace('_', '-')}: {old[k]!r} → {new.get(k)!r}" for k in keys
            if k in old and not _same(old[k], new.get(k), k in paths, previous.get("cwd"))]


def recorded_path(value: str, cwd: str | None) -> Path:
    """A path recorded in a run.json, as the folder it named when it was recorded (from ``cwd``)."""
    path = Path(value)
    return (Path(cwd) / path if cwd and not path.is_absolute() else path).resolve()


def _same(old: Any, new: Any, is_path: bool, old_cwd: str | None) -> bool:
    if is_path and isinstance(old, str) and isinstance(new, str):
        return recorded_path(old, old_cwd) == Path(new).resolve()  # the same folder, named from another cwd
    return old == new


SPEC_SPELLING = {"teacher_checkpoint": "--teacher_checkpoint", "checkpoint_root": "--checkpoint_root"}


def check_out_apart(out: Path, args: argparse.Namespace, flag: str = "--out") -> None:
    """Refuse an output folder that is an input, holds an input, or lies inside an input folder: a later
    ``--overwrite`` there would delete inputs, and a run's files would mix with what it reads.  The inputs
    are every ``Path``-valued setting of ``args`` other than ``flag``'s."""
    target = Path(out).resolve()
    for key, value in vars(args).items():
        if not isinstance(value, Path) or f"--{key.replace('_', '-')}" == flag:
            continue
        source = value.resolve()
        name = SPEC_SPELLING.get(key, f"--{key.replace('_', '-')}")
        if source == target:
            raise UserError(f"{flag}: {out} is also {name}; write results to another folder")
        if source.is_relative_to(target):
            raise UserError(f"{flag}: {out} holds {name} {value}; write results to another folder")
        if target.is_relative_to(source) and source.is_dir():
            raise UserError(f"{flag}: {out} lies inside {name} {value}; write results to another folder")


def read_run_json(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return {}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def describe(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


class RunRecord:
    """``run.json``: command line, settings, versions, git commit, status and wall time."""

    def __init__(self, out: Path, stage: str, args: argparse.Namespace, extra: dict[str, Any] | None = None):
        self.path = Path(out) / RUN_JSON
        self.start = time.time()
        previous = read_run_json(out)
        self.data: dict[str, Any] = {
            "stage": stage,
            "status": "running",
            "command": [Path(sys.argv[0]).name] + sys.argv[1:],
            "cwd": os.getcwd(),  # relative paths in the settings are relative to it
            "settings": describe(args),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "numpy": np.__version__},
            "git_commit": git_commit(),
            "wall_time_s": previous.get("wall_time_s", 0.0),
            **(extra or {}),
        }

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def save(self, status: str | None = None) -> None:
        if status:
            self.data["status"] = status
        now = time.time()
        self.data["wall_time_s"] = round(self.data["wall_time_s"] + now - self.start, 3)
        self.start = now
        write_json(self.path, self.data)
