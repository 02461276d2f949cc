"""Checkpoint files: docs/method.md §4 ``<run>/<e>.pth.tar`` and safe loading.

Loading always uses ``torch.load(..., weights_only=True)``: a file that would need to execute code
(an arbitrary pickle) is refused with a clear error, and it does not run.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdq.function.cli import UserError
from kdq.function.io.atomic import save_torch
from kdq.models import ARCH_NAMES

EPOCH_FILE = re.compile(r"^(\d+)\.pth\.tar$")


def checkpoint_path(run: Path, epoch: int) -> Path:
    return Path(run) / f"{epoch}.pth.tar"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temporary file + ``os.replace``)."""
    save_torch(Path(path), state)


def load_safely(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU.  Any failure is a ValueError saying whether the
    file was refused because it names code to run (``torch.serialization.get_unsafe_globals_in_checkpoint``
    lists what) or is not a readable torch file at all."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling, zip, EOF, struct ...: any reading failure
        reason = type(exc).__name__ if isinstance(exc, pickle.UnpicklingError) else first_line(exc)
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not even a torch.save archive
        raise ValueError(f"{path} is not a torch checkpoint (truncated, damaged or not written by torch.save)") \
            from None
    if unsafe:
        shown = ", ".join(unsafe[:3]) + (" ..." if len(unsafe) > 3 else "")
        raise ValueError(f"{path} was refused by the safe loader (weights_only=True): it holds objects other "
                         f"than tensors and plain containers ({shown}), which could run code")
    raise ValueError(f"{path} is not a readable torch checkpoint, truncated or damaged ({reason})")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:120]}" if text else type(exc).__name__


def load_checkpoint(path: Path, flag: str = "checkpoint") -> dict[str, Any]:
    """Load a torch checkpoint safely; any failure is a UserError that names ``flag`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag}: {path} does not exist or is not a file")
    try:
        obj = load_safely(path)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{flag}: {path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def check_recorded_arch(ckpt: dict[str, Any], arch: str, where: str, arch_flag: str = "--arch") -> None:
    """A kdq checkpoint records the arch it was trained as (a registry name, ``torchvision:<name>`` or
    ``module:factory``); refuse it for another one.  A checkpoint that records none (the original code's) is not
    compared: the weights' keys and shapes decide then."""
    recorded = ckpt.get("arch")
    if recorded is None:
        return
    if not isinstance(recorded, str):
        raise UserError(f"{where} records an arch that is a {type(recorded).__name__}, not a name")
    if (recorded in ARCH_NAMES or ":" in recorded) and recorded != arch:
        raise UserError(f"{where} was trained as {recorded}, not {arch_flag} {arch}")


def state_dict_of(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint (``state_dict`` key, or the dict itself), ``module.`` stripped."""
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError("no tensor state_dict inside")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_weights(model: nn.Module, path: Path, arch: str, flag: str = "checkpoint") -> dict[str, Any]:
    """Load the weights in ``path`` into ``model`` strictly; a mismatch names keys and shapes."""
    ckpt = load_checkpoint(path, flag)
    try:
        sd = state_dict_of(ckpt)
    except ValueError:
        raise UserError(f"{flag}: {path} is not a kdq/torch model checkpoint (no state_dict)") from None
    check_fits(model, sd, arch, f"{flag}: {path}")
    model.load_state_dict(sd)
    return ckpt


def check_numeric(sd: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights a net cannot be run with: complex tensors (a copy into a real parameter would keep only the
    real part) and NaN or infinite values (a diverged run: every σ fit would fail), naming the first tensor."""
    for key, tensor in sd.items():
        if tensor.is_complex():
            raise UserError(f"{where}: tensor {key} is complex ({tensor.dtype}); weights must be real")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(f"{where}: tensor {key} holds {bad} NaN or infinite value(s) (a diverged run?)")


def check_fits(model: nn.Module, sd: dict[str, torch.Tensor], arch: str, where: str,
               arch_flag: str = "--arch") -> None:
    """``sd`` loads into ``model`` strictly (keys and shapes) and holds usable numbers (:func:`check_numeric`)."""
    check_numeric(sd, where)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {shapes[0]}, file vs model)")
        raise UserError(f"{where} does not fit {arch_flag} {arch}: " + "; ".join(parts))


def num_classes_of(sd: dict[str, torch.Tensor], arch_fc3_weight: str) -> int:
    """The number of classes a checkpoint was trained for, read from its fc3 weight."""
    return int(sd[arch_fc3_weight].shape[0])


def num_classes_in(ckpt: dict[str, Any], sd: dict[str, torch.Tensor], fc3: str | None) -> int | None:
    """The number of classes a checkpoint's net was built for: the ``num_classes`` it records (kdq's), else the
    rows of its fc3 weight (the original code's checkpoints); None when neither says."""
    recorded = ckpt.get("num_classes")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
        return recorded
    if fc3 is not None and fc3 in sd and sd[fc3].dim() == 2:
        return num_classes_of(sd, fc3)
    return None


def list_checkpoints(run: Path) -> dict[int, Path]:
    """``{epoch: path}`` of the ``<e>.pth.tar`` files in ``run``, sorted by epoch."""
    found = {int(m.group(1)): p for p in Path(run).iterdir() if (m := EPOCH_FILE.match(p.name))}
    return dict(sorted(found.items()))
