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

from kdq.function.sigma import layout
from kdq.function.cli import UserError
from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.masks import central_square, mask_to_grid
from kdq.function.io.rundir import read_run_json, recorded_path
from kdq.function.metrics.measures import screen_sigma
from kdq.function.train.schedules import paper_schedule
from kdq.models.taps import LAYERS

log = logging.getLogger(__name__)

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
    index: dict[str, int] = field(default_factory=dict)  # name → position in full_name_list (first occurrence)

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
        index = {n: i for i, n in reversed(list(enumerate(full)))}  # the first occurrence wins
        return cls(path, flag, full, effect, meta, index)

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
        index = self.index[name]
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



def pick_folder(folder: Path, layer: str, marker: str) -> Path:
    sub = Path(folder) / layer
    return sub if (sub / marker).is_file() else Path(folder)


def _training_run(flag: str, given: Path | None, sigma: SigmaRun, layer: str) -> Path:
    root = sigma.recorded("checkpoint_root")
    if root is not None:
        root = recorded_path(root, sigma.meta.get("cwd"))
    if given is not None:
        run = pick_folder(given, layer, "weight_diff.npy")
        if root is not None and root.is_dir() and run.is_dir() and not root.samefile(run):
            raise UserError(f"{flag}: {run} is not the training run that {sigma.flag} {sigma.path} was fitted on "
                            f"({root}); pass that one (or leave {flag} out to use it)")
        return run
    if root is None:
        raise UserError(f"{flag} is needed: {sigma.flag} {sigma.path} does not record its training run")
    return Path(root)


def _run_epochs(run: Path, flag: str) -> int:
    path = run / "weight_diff.npy"
    if not path.is_file():
        raise UserError(f"{flag}: {path} is missing")
    try:
        return int(np.load(path, allow_pickle=False, mmap_mode="r").shape[-1]) - 1
    except (ValueError, OSError) as exc:
        raise UserError(f"{flag}: cannot read {path} ({exc})") from None


def cli_epochs(spec: list[str] | None, label_run: Path, distil_run: Path) -> list[int] | None:
    """The epochs ``--checkpoints`` gives (None without it); ``paper``: the schedule of the training runs."""
    if spec is None:
        return None
    if spec == ["paper"]:
        a = paper_schedule(_run_epochs(label_run, "--label-run"))
        b = paper_schedule(_run_epochs(distil_run, "--distil-run"))
        if a != b:
            raise UserError(f"--checkpoints paper: the training runs differ in length, so their schedules differ "
                            f"(label {a} vs distil {b}); give the epochs explicitly")
        return a
    try:
        epochs = [int(e) for e in spec]
    except ValueError:
        raise UserError(f"--checkpoints takes epochs (integers) or 'paper', got {' '.join(spec)}") from None
    if any(e < 0 for e in epochs) or epochs != sorted(set(epochs)):
        raise UserError(f"--checkpoints must be distinct epochs ≥ 0 in increasing order, got {epochs}")
    return epochs


def _arch(args, *sources: SigmaRun | Path) -> str | None:
    if args.arch:
        return args.arch
    for src in sources:
        arch = src.recorded("arch") if isinstance(src, SigmaRun) else \
            (read_run_json(src).get("settings") or {}).get("arch")
        if arch:
            return str(arch)
    return None


@dataclass
class LayerInputs:
    """Everything one layer's analysis needs, read and checked (nothing logged yet)."""
    layer: str
    lab: SigmaRun
    dis: SigmaRun
    label_run: Path
    distil_run: Path
    epochs: list[int]
    epochs_source: str
    pair: PairedSigma
    wd: dict[str, np.ndarray]
    size: int
    skip0: bool
    allowed: np.ndarray
    fg: np.ndarray
    fallback: list[str]
    foreground: str  # "masks" or "central"
    warnings: list[str]
    notes: list[str]


def load_layer(args, layer: str, data: MaskedImageFolder, label_sigma: Path, distil_sigma: Path) -> LayerInputs:
    """Read and check one layer's inputs; every problem is a UserError, nothing is logged here."""
    lab = SigmaRun.open(label_sigma, "--label-sigma")
    dis = SigmaRun.open(distil_sigma, "--distil-sigma")
    for sr in (lab, dis):
        recorded = sr.recorded("layer")
        if recorded is not None and recorded != layer:
            raise UserError(f"{sr.flag}: {sr.path} was fitted at layer {recorded}, not {layer}")
    check_recorded_grid(lab, dis)
    label_run = _training_run("--label-run", args.label_run, lab, layer)
    distil_run = _training_run("--distil-run", args.distil_run, dis, layer)
    epochs, source = resolve_epochs(lab, dis, cli_epochs(args.checkpoints, label_run, distil_run))
    if source == "--checkpoints" and args.checkpoints == ["paper"]:
        source = f"--checkpoints paper, scaled to {_run_epochs(label_run, '--label-run')} epochs"
    if epochs != sorted(set(epochs)) or min(epochs) < 0:
        raise UserError(f"the sigma runs record checkpoint epochs {epochs}; expected distinct epochs ≥ 0, oldest first")
    pair = load_pair(lab, dis, epochs, args.grid)
    grid = pair.label.shape[-1]
    row = LAYERS.index(layer)
    wd = {"label": load_weight_diff(label_run, "--label-run", epochs, row),
          "distil": load_weight_diff(distil_run, "--distil-run", epochs, row)}

    warnings: list[str] = []
    notes: list[str] = []
    arch = _arch(args, lab, dis, label_run, distil_run)
    info = None
    if arch and not (args.image_size and args.mhat_skip_epoch0 != "auto"):
        from kdq.models import ARCHS  # imported only when needed: building the registry takes seconds
        info = ARCHS.get(arch)
        if info is None:
            warnings.append(f"architecture {arch!r} is not in the registry: pass --image-size and --mhat-skip-epoch0")
    size = args.image_size or lab.recorded("image_size", "input_size") or (info.input_size if info else None)
    if size is None:
        size = 224
        notes.append("input size S unknown (no --arch/--image-size, nothing recorded): S = 224 assumed for the masks")
        warnings.append(notes[-1])
    skip0 = {"yes": True, "no": False}.get(args.mhat_skip_epoch0, bool(info and info.family == "resnet"))
    allowed = np.array([not (skip0 and e == 0) for e in epochs])
    if not allowed.any():
        allowed[:] = True
        notes.append("m̂: epoch 0 is the only checkpoint, so it is kept")

    foreground = args.foreground
    if foreground == "auto":
        recorded = {run.recorded("foreground") for run in (lab, dis)} - {None}
        if len(recorded) > 1:
            raise UserError(f"the sigma runs used different foregrounds ({' vs '.join(sorted(recorded))}); "
                            "pass --foreground")
        foreground = recorded.pop() if recorded else "masks"
    if foreground == "central":
        fg, fallback = np.stack([central_square(grid)] * len(pair.names)), []
        notes.append("foreground: the central square [g/6, 5g/6] for every image")
    else:
        fg, fallback = foreground_cells(data, pair.names, int(size), grid, args.missing_mask)
    if fallback:
        notes.append(f"{len(fallback)} image(s) without a mask use the central square")
    no_bg = int((fg.reshape(len(fg), -1).all(axis=1)).sum())
    if no_bg:
        notes.append(f"{no_bg} image(s) have no background cell and do not enter the baseline H̄_bg")
    no_fg = int((~fg.reshape(len(fg), -1).any(axis=1)).sum())
    if no_fg:
        notes.append(f"{no_fg} image(s) have no foreground cell (N_fg = 0, ρ = 0 for them)")
    if pair.skipped:
        notes.append(f"{len(pair.skipped)} image(s) skipped for NaN/inf or σ* ≤ 0: "
                     + ", ".join(f"{n} ({r})" for n, r in list(pair.skipped.items())[:5])
                     + (" …" if len(pair.skipped) > 5 else ""))
        warnings += [f"skipping {name}: σ* is {why}" for name, why in pair.skipped.items()]
        warnings.append(f"skipped {len(pair.skipped)} of {pair.both} images effective in both runs "
                        "(NaN/inf or σ* ≤ 0)")
    return LayerInputs(layer, lab, dis, label_run, distil_run, epochs, source, pair, wd, int(size), skip0, allowed,
                       fg, fallback, foreground, warnings, notes)


def layer_dirs(layer: str, label_sigma: Path, distil_sigma: Path) -> list[tuple[str, Path, Path]]:
    """``(layer, label sigma run, distil sigma run)`` for one layer, or for every layer with ``all``."""
    if layer != "all":
        return [(layer, pick_folder(label_sigma, layer, "full_name_list.txt"),
                 pick_folder(distil_sigma, layer, "full_name_list.txt"))]
    found = []
    for layer in LAYERS:
        a, b = label_sigma / layer, distil_sigma / layer
        if (a / "full_name_list.txt").is_file() and (b / "full_name_list.txt").is_file():
            found.append((layer, a, b))
    if not found:
        raise UserError(f"--layer all: no layer has sigma runs in both {label_sigma}/<layer> and "
                        f"{distil_sigma}/<layer> (layers: {', '.join(LAYERS)})")
    return found
