"""Reading what the metrics stage compares: two sigma runs (SPEC §4 layout, kdq's or the original
code's), the training runs' ``weight_diff.npy`` and the foreground masks at cell resolution.

Every problem with the inputs is a :class:`~function.cli.UserError` that names the flag and the file;
an image whose σ* holds NaN/inf or a value ≤ 0 is not an error but is skipped and counted.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import sigma_layout as layout
from .cli import UserError
from .datasets import MaskedImageFolder
from .masks import central_square, mask_to_grid
from .metrics import screen_sigma

log = logging.getLogger("kdq")

LAYERS = ("conv", "fc1", "fc2", "fc3")  # = models.LAYERS, the rows of weight_diff.npy (SPEC §1); kept here
# so that reading results does not import the model registry
EPOCH_KEYS = ("checkpoints", "epochs", "checkpoint_epochs")


def _epoch_list(value: Any) -> list[int] | None:
    """A recorded list of epochs, or None when ``value`` is not one (e.g. the raw CLI ``['paper']``)."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        return None


@dataclass
class SigmaRun:
    path: Path
    flag: str
    full: list[str]
    effect: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, flag: str) -> "SigmaRun":
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{flag}: {path} does not exist or is not a directory")
        if not (path / layout.FULL_LIST).is_file():
            raise UserError(f"{flag}: {path} is not a sigma run (no {layout.FULL_LIST})")
        full = layout.read_names(path / layout.FULL_LIST)
        effect = layout.read_names(path / layout.EFFECT_LIST)
        unknown = [n for n in effect if n not in set(full)]
        if unknown:
            raise UserError(f"{flag}: {path / layout.EFFECT_LIST} names {len(unknown)} image(s) missing from "
                            f"{layout.FULL_LIST} (first: {unknown[0]})")
        meta: dict[str, Any] = {}
        if (path / "run.json").is_file():
            try:
                meta = json.loads((path / "run.json").read_text())
            except ValueError as exc:
                raise UserError(f"{flag}: {path / 'run.json'} is not valid JSON ({exc})") from None
            if not isinstance(meta, dict):
                meta = {}
        return cls(path, flag, full, effect, meta)

    def recorded(self, *keys: str) -> Any:
        """The first of ``keys`` found at the top level of run.json, then under ``settings``."""
        for scope in (self.meta, self.meta.get("settings") or {}):
            for key in keys:
                if isinstance(scope, dict) and scope.get(key) is not None:
                    return scope[key]
        return None

    def recorded_epochs(self) -> list[int] | None:
        """The epochs of the K entries when run.json records them (top level first, then settings)."""
        for scope in (self.meta, self.meta.get("settings") or {}):
            for key in EPOCH_KEYS:
                if isinstance(scope, dict):
                    epochs = _epoch_list(scope.get(key))
                    if epochs is not None:
                        return epochs
        return None

    def sigma(self, name: str) -> np.ndarray:
        """σ* of one image as float64 (K, g, g); UserError when the file is missing or malformed."""
        if not hasattr(self, "_index"):
            self._index = {n: i for i, n in reversed(list(enumerate(self.full)))}  # first occurrence wins
        index = self._index[name]
        path = layout.array_path(self.path, index, "best_sigma_entropy")
        arr = load_npy(path, self.flag, f" (image {name})")
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or not np.issubdtype(arr.dtype, np.number):
            raise UserError(f"{self.flag}: {path} has shape {arr.shape} ({arr.dtype}); expected (K, 1, g, g)")
        return arr.astype(np.float64)


def resolve_epochs(label: SigmaRun, distil: SigmaRun, cli: list[int] | None) -> tuple[list[int], str]:
    """The checkpoint epochs of the K entries and where they came from; the runs must agree."""
    rec = {run.flag: run.recorded_epochs() for run in (label, distil)}
    a, b = rec[label.flag], rec[distil.flag]
    if a is not None and b is not None and a != b:
        raise UserError(f"the sigma runs were fitted on different checkpoint schedules: {label.flag} {a} vs "
                        f"{distil.flag} {b}")
    recorded = a if a is not None else b
    if cli is not None:
        if recorded is not None and recorded != cli:
            raise UserError(f"--checkpoints {cli} disagrees with the epochs the sigma run records: {recorded}")
        return list(cli), "--checkpoints"
    if recorded is None:
        raise UserError("the sigma runs do not record their checkpoint epochs (no run.json): pass --checkpoints "
                        "E1 E2 ... (one per sigma entry, oldest first) or --checkpoints paper")
    return recorded, "run.json"


def check_recorded_grid(label: SigmaRun, distil: SigmaRun) -> None:
    ga, gb = label.recorded("grid"), distil.recorded("grid")
    if ga is not None and gb is not None and int(ga) != int(gb):
        raise UserError(f"the sigma runs were fitted with different grids: {label.flag} {ga}x{ga} vs "
                        f"{distil.flag} {gb}x{gb}")


@dataclass
class PairedSigma:
    names: list[str]  # images effective in both runs and usable in both
    label: np.ndarray  # (N, K, g, g) σ*
    distil: np.ndarray
    both: int  # images effective in both runs (before screening)
    skipped: dict[str, str]  # name → "label: non-finite" etc.


def load_pair(label: SigmaRun, distil: SigmaRun, epochs: list[int], grid: int | None) -> PairedSigma:
    """σ* of the images effective in both runs, with shape checks and NaN/inf/≤0 screening.

    Skipped images are returned (``skipped``), not logged: the caller warns once the other inputs are
    checked, so that a bad input still gives exactly one line on stderr."""
    in_distil = set(distil.effect)
    names = [n for n in label.effect if n in in_distil]
    if not names:
        raise UserError(f"no image is effective in both sigma runs ({label.flag}: {len(label.effect)} effective, "
                        f"{distil.flag}: {len(distil.effect)} effective, none in common)")
    kept, a_list, b_list, skipped = [], [], [], {}
    shapes: dict[str, tuple] = {}
    for name in names:
        arrays = {}
        for run, key in ((label, "label"), (distil, "distil")):
            arr = run.sigma(name)
            shape = shapes.setdefault(key, arr.shape)
            if arr.shape != shape:
                raise UserError(f"{run.flag}: image {name} has σ* of shape {arr.shape}, others {shape}")
            arrays[key] = arr
        if not kept and not skipped:
            _check_shapes(label, distil, shapes, epochs, grid)
        reasons = [f"{k}: {r}" for k, r in ((k, screen_sigma(v)) for k, v in arrays.items()) if r]
        if reasons:
            skipped[name] = "; ".join(reasons)
            continue
        kept.append(name)
        a_list.append(arrays["label"])
        b_list.append(arrays["distil"])
    if not kept:
        raise UserError(f"none of the {len(names)} image(s) effective in both runs has a usable σ* "
                        f"(all hold NaN/inf or values ≤ 0)")
    return PairedSigma(kept, np.stack(a_list), np.stack(b_list), len(names), skipped)


def _check_shapes(label: SigmaRun, distil: SigmaRun, shapes: dict, epochs: list[int], grid: int | None) -> None:
    (ka, ga, _), (kb, gb, _) = shapes["label"], shapes["distil"]
    if ga != gb:
        raise UserError(f"the sigma runs were fitted with different grids: {label.flag} {ga}x{ga} vs "
                        f"{distil.flag} {gb}x{gb}")
    if ka != kb:
        raise UserError(f"the sigma runs were fitted on different checkpoint schedules: {label.flag} has {ka} "
                        f"checkpoints, {distil.flag} has {kb}")
    if grid is not None and grid != ga:
        raise UserError(f"--grid {grid} but the sigma files hold a {ga}x{ga} grid")
    if len(epochs) != ka:
        raise UserError(f"the sigma files hold {ka} checkpoints but the epochs given are {len(epochs)}: {epochs}")


def load_npy(path: Path, flag: str, context: str = "") -> np.ndarray:
    """``np.load`` without pickle; a missing or unreadable file is a UserError naming ``flag``."""
    if not path.is_file():
        raise UserError(f"{flag}: {path} is missing{context}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"{flag}: cannot read {path} ({exc})") from None


def load_weight_diff(run: Path, flag: str, epochs: list[int], row: int) -> np.ndarray:
    """Row ``row`` of ``<run>/weight_diff.npy`` (4, E+1), checked to cover the sigma checkpoints."""
    path = Path(run) / "weight_diff.npy"
    if not Path(run).is_dir():
        raise UserError(f"{flag}: {run} does not exist or is not a directory")
    wd = load_npy(path, flag)
    if wd.ndim != 2 or wd.shape[0] != 4 or not np.issubdtype(wd.dtype, np.number):
        raise UserError(f"{flag}: {path} has shape {wd.shape}; expected (4, epochs+1), rows conv fc1 fc2 fc3")
    if max(epochs) > wd.shape[1] - 1:
        raise UserError(f"{flag}: {path} covers epochs 0..{wd.shape[1] - 1} but the sigma checkpoints reach "
                        f"epoch {max(epochs)}")
    if not np.all(np.isfinite(wd[row, :max(epochs) + 1])):
        raise UserError(f"{flag}: {path} holds NaN/inf in the analysed layer's row")
    return wd[row].astype(np.float64)


def foreground_cells(data: MaskedImageFolder, names: list[str], size: int, grid: int,
                     missing: str = "error") -> tuple[np.ndarray, list[str]]:
    """(N, g, g) foreground cells of ``names`` (SPEC §2); ``missing='central'`` uses the central square
    for an image without a mask (returned in the second value), ``'error'`` refuses it."""
    out, fallback = [], []
    for name in names:
        i = data.index_of(name)
        mask = data.mask(i)
        if mask is None:
            if missing != "central":
                raise UserError(f"--data: missing mask for image {name} (expected {data.mask_path(i)})")
            fallback.append(name)
            out.append(central_square(grid))
        else:
            out.append(mask_to_grid(mask, size, grid))
    return np.stack(out), fallback
