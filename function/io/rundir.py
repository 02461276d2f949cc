"""Run folders: refuse to overwrite results, record what produced them (``run.json``)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from kdq.function.cli import UserError
from kdq.function.io.atomic import hidden_stem, is_temp, remove_stale_temps, write_json
from kdq.function.io.lock import acquire, on_release

# a stage's typed config (kdq.function.config.StageConfig), or a data tool's parsed flags
Settings = Any

log = logging.getLogger(__name__)
RUN_JSON = "run.json"


NEW, RESUME, REPLACE = "new", "resume", "replace"
DATASET_JSON = "dataset.json"
SYNTHETIC_GENERATOR = "kdq.synthetic"  # dataset.json's "generator" of the embedded dataset (make_dataset)
TEXT_GENERATOR = "kdq.synthetic_text"  # ... of the embedded text dataset (make_dataset --modality text)
POINTS_GENERATOR = "kdq.synthetic_points"  # ... of the embedded point clouds (make_dataset --modality points)
DATASET_GENERATORS = (SYNTHETIC_GENERATOR, TEXT_GENERATOR, POINTS_GENERATOR)  # what make_dataset writes


def recorded_stage(folder: Path) -> str | None:
    """The kdq stage that wrote ``folder``: the ``stage`` of its run.json, or for a dataset the writer its
    dataset.json names (``make_dataset``, ``prepare_data``); None for a folder kdq did not write."""
    stage = read_run_json(folder).get("stage")
    if isinstance(stage, str):
        return stage
    manifest = read_json(Path(folder) / DATASET_JSON)
    if manifest.get("generator") in DATASET_GENERATORS:
        return "make_dataset"
    if isinstance(manifest.get("preparer"), str):
        return "prepare_data"
    return None


DONE = ".done"  # the Makefile's marker of a finished stage
# EpochLoop names of each stage (weight_distance: checkpoints of another trainer, no loop)
PHASES = {"train_net": ("train",), "distillation": ("distill", "finetune"), "weight_distance": ()}


def phase_files(phase: str) -> tuple[str, str, str]:
    """What a training phase (an EpochLoop ``name``) writes besides its checkpoints: its resume state and its
    log as JSON and CSV."""
    return f"{phase}_state.pth.tar", f"{phase}_log.json", f"{phase}_log.csv"


Owns = Callable[[tuple[str, ...], bool], bool]  # (path parts relative to the run folder, is a folder) → ours?


def _int_list(value: Any) -> list[int]:
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)] if isinstance(value, list) else []


def _training_owns(out: Path, stage: str) -> Owns:
    """A training run: run.json, the epochs its run.json records as ``<e>.pth.tar``, each phase's state and logs,
    weight_diff.npy and the final checkpoint it records; no folders."""
    from kdq.function.io.checkpoint import checkpoint_path  # torch: only for a training run

    record = read_run_json(out)
    names = {RUN_JSON, DONE, "weight_diff.npy"} | {checkpoint_path(out, e).name for e in _int_list(record.get("checkpoints"))}
    for phase in PHASES[stage]:
        names.update(phase_files(phase))
    final = record.get("final_checkpoint")
    if isinstance(final, str) and Path(final).name == final:
        names.add(final)
    return lambda parts, is_dir: not is_dir and len(parts) == 1 and parts[0] in names


def _sigma_owns(out: Path) -> Owns:
    """A sigma run: run.json, its name lists and ``img_<i>_{effect,non_effect}/`` for each ``i`` of its draw,
    holding ``fit.json`` and ``npy_files/<array>.npy``."""
    from kdq.function.sigma import layout

    record = read_run_json(out)
    drawn = record.get("candidates")
    if not isinstance(drawn, int) or isinstance(drawn, bool):
        drawn = len(layout.read_names(out / layout.FULL_LIST))
    top = {RUN_JSON, DONE, layout.FULL_LIST, layout.EFFECT_LIST, layout.NON_EFFECT_LIST}
    arrays = {f"{name}.npy" for name in layout.ARRAYS}

    def image(name: str) -> bool:
        index = name.removeprefix("img_").removesuffix(layout.NON_EFFECT_SUFFIX).removesuffix(layout.EFFECT_SUFFIX)
        return index.isdigit() and int(index) < drawn and name in (
            layout.image_folder(out, int(index), effective).name for effective in (True, False))

    def owns(parts: tuple[str, ...], is_dir: bool) -> bool:
        if len(parts) == 1:
            return image(parts[0]) if is_dir else parts[0] in top
        if len(parts) == 2:
            return parts[1] == "npy_files" if is_dir else parts[1] == layout.FIT_JSON
        return len(parts) == 3 and not is_dir and parts[1] == "npy_files" and parts[2] in arrays
    return owns


METRICS_FILES = ("metrics.json", "metrics.csv", "report.md")
FIGURES = "figures"


def recorded_figures(value: Any) -> set[str]:
    """Every figure path a metrics.json records (the ``figures`` maps of its layers, at any depth)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == FIGURES and isinstance(item, dict):
                found.update(v for v in item.values() if isinstance(v, str))
            else:
                found |= recorded_figures(item)
    elif isinstance(value, list):
        for item in value:
            found |= recorded_figures(item)
    return found


def _metrics_owns(out: Path) -> Owns:
    """A metrics report: run.json, metrics.json, metrics.csv, report.md and the figures its metrics.json lists."""
    figures = {tuple(Path(f).parts) for f in recorded_figures(read_json(out / "metrics.json"))}
    top = {RUN_JSON, *METRICS_FILES}
    return lambda parts, is_dir: (parts == (FIGURES,) if is_dir else
                                  (len(parts) == 1 and parts[0] in top) or parts in figures)


def _dataset_owns(out: Path) -> Owns:
    """An embedded dataset: dataset.json and what make_dataset writes for each split and class it records (images
    and their masks under ``seg/``; a text dataset's vocab.txt and <split>.jsonl; point clouds and their flags)."""
    from kdq.function.data import points, synthetic, text

    manifest = read_json(out / DATASET_JSON)
    written = [f for module in (synthetic, text, points) for f in module.dataset_files(manifest)]
    files = {(DATASET_JSON,)} | {tuple(Path(f).parts) for f in written}
    folders = {parts[:i] for parts in files for i in range(1, len(parts))}
    return lambda parts, is_dir: parts in (folders if is_dir else files)


def _owner(out: Path, stage: str) -> Owns | None:
    """What a run of ``stage`` in ``out`` wrote, from its own records (None: a stage that never replaces a run)."""
    if stage in PHASES:
        return _training_owns(out, stage)
    return {"train_sigma": _sigma_owns, "find_knowledge": _metrics_owns,
            "make_dataset": _dataset_owns}.get(stage, lambda _: None)(out)


def foreign_entries(out: Path, stage: str) -> list[str]:
    """Everything in ``out``, at any depth, that a run of ``stage`` did not write — by exact name: the files its
    records name (the epochs of its schedule, its image folders and their files ...), nothing matched by a pattern.
    A foreign folder is listed once (``name/``), a symbolic link always counts as foreign, and the temporary files of
    a killed writer directly in ``out`` do not count."""
    owns = _owner(Path(out), stage)
    if owns is None:
        return []
    found: list[str] = []

    def walk(folder: Path, parts: tuple[str, ...]) -> None:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                here, is_dir = parts + (entry.name,), entry.is_dir(follow_symlinks=False)
                if not parts and is_temp(Path(entry.path)):
                    continue
                if entry.is_symlink() or not owns(here, is_dir):
                    found.append("/".join(here) + ("/" if is_dir else ""))
                elif is_dir:
                    walk(Path(entry.path), here)
    walk(Path(out), ())
    return found


# ---- --overwrite: the previous run waits aside until the new one has written a result ----------------------------

_ASIDE: dict[Path, Path] = {}  # real run folder → where its previous run waits, for this process


def aside_path(out: Path) -> Path:
    """``<parent>/.<name>.old``: where ``--overwrite`` keeps the previous run of ``out`` until the new one has
    written its first result (beside the real folder; a hashed stem for a long name)."""
    real = Path(out).resolve()
    return real.parent / f"{hidden_stem(real.name)}.old"


def move_aside(out: Path) -> Path:
    """Move the run in ``out`` (whose lock this process holds) aside; :func:`proved` deletes it, and if this process
    releases the lock before that (the new run failed, was interrupted or refused) it is put back."""
    real = Path(out).resolve()
    aside = aside_path(real)
    os.rename(real, aside)
    _ASIDE[real] = aside
    on_release(real, lambda: put_back(real))
    return aside


def proved(out: Path) -> None:
    """The new run in ``out`` has written its first result (an epoch, an image, its record ``complete``): delete the
    previous run that ``--overwrite`` moved aside (nothing to do when there is none)."""
    aside = _ASIDE.pop(Path(out).resolve(), None) if _ASIDE else None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def put_back(out: Path) -> None:
    """Replace what the new run in ``out`` wrote by the previous run, when it is still aside."""
    real = Path(out).resolve()
    aside = _ASIDE.pop(real, None)
    if aside is None:
        return
    try:
        if real.is_dir() and not real.is_symlink():
            shutil.rmtree(real)
        os.rename(aside, real)
    except OSError as exc:
        log.warning("%s: the previous run could not be put back (%s); it is kept at %s", real, exc, aside)
        return
    log.info("%s: the new run stopped before its first result; the previous run is back in place", real)


def check_no_aside(out: Path, flag: str = "--out") -> None:
    """Refuse ``out`` while a previous run of it waits aside from a killed ``--overwrite``, saying where it is
    and how to put it back or drop it."""
    aside = aside_path(out)
    if Path(out).resolve() in _ASIDE or not (aside.exists() or aside.is_symlink()):
        return
    real, a = shlex.quote(str(Path(out).resolve())), shlex.quote(str(aside))
    restore = f"rm -rf {real} && mv {a} {real}" if Path(out).exists() else f"mv {a} {real}"
    raise UserError(f"{flag}: the previous run of {out} is kept at {aside} (an --overwrite stopped before its new "
                    f"run wrote a result); put it back with `{restore}`, or drop it with `rm -rf {a}`")


def check_out(out: Path, stage: str, resume: bool = False, overwrite: bool = False, flag: str = "--out",
              resumable: bool = True) -> str:
    """What a run of ``stage`` may do with ``out``, checked before anything is written or deleted:
    ``NEW`` (absent or empty), ``RESUME`` (``--resume`` of a run of the same stage) or ``REPLACE``
    (``--overwrite`` of a run of the same stage that holds nothing but what that stage writes, at any depth: kdq
    replaces only what it wrote itself, of the same kind).  Anything else is a UserError.  The caller becomes the
    only writer of the real folder ``out`` names (:mod:`kdq.function.io.lock`) until it ends.  Temporary files a
    killed writer left (``.*.tmp``) do not count as files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag}: {out} exists and is not a directory")
    acquire(out, flag)
    check_no_aside(out, flag)
    if not (out.is_dir() and any(not is_temp(p) for p in out.iterdir())):
        return NEW
    owner = recorded_stage(out)
    held = f"a {owner} run" if owner else "files that are not a kdq run"
    if resume:
        if owner != stage:
            raise UserError(f"--resume: {out} holds {held}, not a {stage} run; use another {flag}")
        return RESUME
    if overwrite:
        if owner != stage:
            raise UserError(f"{flag}: {out} holds {held}, not a {stage} run; --overwrite replaces only a {stage} "
                            f"run (use another {flag}, or remove it yourself)")
        foreign = foreign_entries(out, stage)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" (and {len(foreign) - 5} more)" if len(foreign) > 5 else "")
            raise UserError(f"--overwrite: {out} also holds files that {stage} did not write ({shown}); move them "
                            "away first, kdq deletes only what it wrote")
        return REPLACE
    if owner is None:
        raise UserError(f"{flag}: {out} is not empty and holds {held}; use another {flag}")
    advice = "pass --resume to continue it or --overwrite to replace it" if resumable else \
        "pass --overwrite to replace it"
    status = read_run_json(out).get("status")
    if status == "running":  # we hold the lock, so no process runs it: it was killed
        status = "interrupted"
    shown = f" (status: {status})" if isinstance(status, str) else ""
    raise UserError(f"{flag}: {out} already holds {held}{shown}; {advice}")


def prepare_out(out: Path, resume: bool, overwrite: bool, stage: str, flag: str = "--out") -> bool:
    """Make ``out`` ready for a run of ``stage`` (:func:`check_out`, then create it; for ``--overwrite`` the
    previous run is moved aside, :func:`move_aside`); True when an earlier run there is resumed.  Stale temporary
    files are removed.  ``out`` may be a symbolic link: the folder it names is used."""
    out = Path(out)
    mode = check_out(out, stage, resume, overwrite, flag)
    if mode == REPLACE:
        move_aside(out)
    out.resolve().mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    return mode == RESUME


def open_run(out: Path, stage: str, args: Settings, ctx, device,
             check: Callable[[], None] | None = None) -> bool:
    """Claim ``out`` for a run of ``stage``: rank 0 runs :func:`prepare_out` (and ``check()`` when it resumes an
    earlier run) while the other ranks wait, and every rank stops with rank 0's refusal.  True when an earlier
    run is resumed (on ranks other than 0: when ``--resume`` was given)."""
    from kdq.function.runtime import all_ok  # torch.distributed: only when a run starts

    resume, error = bool(args.resume), None
    if ctx.is_main:
        try:
            resume = prepare_out(out, args.resume, args.overwrite, stage)
            if resume and check is not None:
                check()
        except UserError as exc:
            error = exc
    if not all_ok(error is None, device):
        raise error or UserError(f"{stage}: rank 0 refused --out {out}")
    return resume


def check_resume_settings(out: Path, cfg, resolved: dict[str, Any] | None = None) -> None:
    """Refuse to ``--resume`` a run made with other result-defining settings (``prepare_out`` has checked
    that it is a run of this stage): every field of the stage's config that defines results
    (:meth:`~kdq.function.config.StageConfig.result_settings`, the one rule of every stage) must equal what the
    run recorded (``resolved`` replaces fields whose value depends on other inputs); the error lists each
    difference.  A growable field may grow (``--epochs`` of train_net: extending a training)."""
    previous = read_run_json(out)
    recorded = previous.get("settings", {})
    grown = {k for k in type(cfg).growable_settings() if isinstance(recorded.get(k), int)
             and isinstance(getattr(cfg, k, None), int) and getattr(cfg, k) > recorded[k]}
    keys = sorted(k for k in type(cfg).result_settings() if k in recorded and k not in grown)
    diffs = setting_diffs(previous, cfg, keys, resolved)
    if diffs:
        raise UserError(f"--resume: {out} was made with other settings ({'; '.join(diffs)}); "
                        "rerun with those or use another --out")


def setting_diffs(previous: dict[str, Any], args: Settings, keys: Iterable[str],
                  resolved: dict[str, Any] | None = None) -> list[str]:
    """``--flag: old → new`` for each of ``keys`` that the run.json ``previous`` records with another value than
    this run records (:func:`describe`: tuples are lists; paths compared as the folders they name, each relative
    to the working directory of its own command)."""
    old = previous.get("settings", {})
    new = json.loads(json.dumps(describe(args, resolved), default=str))
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


CONTRACT_SPELLING = {"teacher_checkpoint": "--teacher_checkpoint", "checkpoint_root": "--checkpoint_root"}


def check_out_apart(out: Path, args: Settings, flag: str = "--out",
                    recorded: dict[str, Path] | None = None) -> None:
    """Refuse an output folder that is an input, holds an input, or lies inside an input folder: a later
    ``--overwrite`` there would delete inputs, and a run's files would mix with what it reads.  The inputs
    are every ``Path``-valued setting of ``args`` other than ``flag``'s, and ``recorded`` (description → path):
    inputs found through a record rather than a flag, e.g. the training run a sigma run names."""
    inputs = {}
    for key, value in vars(args).items():
        name = CONTRACT_SPELLING.get(key, f"--{key.replace('_', '-')}")
        values = value if isinstance(value, (list, tuple)) else [value]
        paths = [v for v in values if isinstance(v, Path)]
        if f"--{key.replace('_', '-')}" != flag:
            inputs.update({name if len(paths) == 1 else f"{name} {p}": p for p in paths})
    target = Path(out).resolve()
    for name, value in {**inputs, **(recorded or {})}.items():
        source = Path(value).resolve()
        if source == target:
            raise UserError(f"{flag}: {out} is also {name}; write results to another folder")
        if source.is_relative_to(target):
            raise UserError(f"{flag}: {out} holds {name} {value}; write results to another folder")
        if target.is_relative_to(source) and source.is_dir():
            raise UserError(f"{flag}: {out} lies inside {name} {value}; write results to another folder")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# The types of the run.json fields kdq reads back (top level and under "settings"); None always means "not
# recorded".  A field of another type is a damaged or foreign file, reported in one line instead of a traceback.
_INT, _NUM, _STR = (int,), (int, float), (str,)
RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "stage": _STR, "status": _STR, "settings": (dict,), "model": (dict,), "wall_time_s": _NUM, "cwd": _STR,
    "checkpoints": (list,), "classes": (list,), "layer": _STR, "grid": _INT, "image_size": _INT,
    "input_size": _INT, "total_epochs": _INT, "num_classes": _INT, "checkpoint_root": _STR, "epochs": _INT,
    "arch": _STR, "taps": _STR, "family": _STR, "teacher": (dict,), "final": (dict,), "best_acc1": _NUM,
    "final_val_acc1": _NUM,
}


def check_record_types(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``data`` (a run.json) when every field kdq reads has its type; a UserError naming file and field."""
    for scope_name, scope in (("", data), ("settings.", data.get("settings")), ("model.", data.get("model"))):
        if not isinstance(scope, dict):
            continue
        for key, kinds in RECORD_TYPES.items():
            value = scope.get(key)
            if value is None or (isinstance(value, kinds) and not isinstance(value, bool)):
                continue
            raise UserError(f"{path}: field {scope_name}{key} is {type(value).__name__} {json.dumps(value)[:60]}, "
                            f"not {' or '.join(k.__name__ for k in kinds)}: the file is damaged or not kdq's")
    return data


def read_run_json(folder: Path) -> dict[str, Any]:
    """A folder's run.json ({} when it has none or it is not JSON), its fields' types checked."""
    path = Path(folder) / RUN_JSON
    return check_record_types(read_json(path), path)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def describe(args: Settings, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a run records: every flag (paths as text), with ``resolved`` replacing the flags whose
    value was derived from other inputs (e.g. a λ that defaults by architecture)."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(resolved or {})
    return settings


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape the results (those this process has imported)."""
    found = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "torchvision", "matplotlib", "PIL"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            found[name] = module.__version__
    return found


class RunRecord:
    """``run.json``: command line, settings, versions, git commit, status and wall time."""

    def __init__(self, out: Path, stage: str, args: Settings, extra: dict[str, Any] | None = None,
                 resolved: dict[str, Any] | None = None, carry_wall_time: bool = True):
        self.path = Path(out) / RUN_JSON
        self.start = time.time()
        previous = read_run_json(out) if carry_wall_time else {}  # a resumed run adds to its wall time
        self.data: dict[str, Any] = {
            "stage": stage,
            "status": "running",
            "command": [Path(sys.argv[0]).name] + sys.argv[1:],
            "cwd": os.getcwd(),  # relative paths in the settings are relative to it
            "settings": describe(args, resolved),
            "versions": versions(),
            "git_commit": git_commit(),
            "wall_time_s": previous.get("wall_time_s", 0.0),
            **(extra or {}),
        }

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    @contextlib.contextmanager
    def running(self, enabled: bool = True):
        """Record ``running`` now and, when the block ends by an exception, ``interrupted`` (Ctrl-C, SIGTERM) or
        ``failed``; the caller saves ``complete``.  ``enabled`` False (ranks other than 0) records nothing."""
        if enabled:
            self.save("running")
        try:
            yield self
        except BaseException as exc:
            if enabled:
                with contextlib.suppress(OSError):  # a full disk must not hide the error that stopped the run
                    self.save("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            raise

    def save(self, status: str | None = None, folder: Path | None = None) -> None:
        """Write run.json (into ``folder`` instead of the run folder: a report written whole elsewhere first)."""
        if status:
            self.data["status"] = status
        now = time.time()
        self.data["wall_time_s"] = round(self.data["wall_time_s"] + now - self.start, 3)
        self.start = now
        write_json(self.path if folder is None else Path(folder) / RUN_JSON, self.data)
        if status == "complete" and folder is None:
            proved(self.path.parent)
