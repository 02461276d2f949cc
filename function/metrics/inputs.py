"""Reading what the metrics stage compares, for one layer: two sigma runs (docs/method.md §4 layout, kdq's or the original
code's), the training runs' ``weight_diff.npy`` and the foreground cells of the images.

Each net keeps its own checkpoint schedule (a 400-epoch student may be compared with a 150-epoch label net).
The images are those effective in both sigma runs (duplicate names counted once, as the original's set
intersection).  kdq then pairs them: an image whose σ* is unusable (NaN/inf or ≤ 0) in either run is left out
of both.  With ``compat="original"`` each net filters its own images (``min σ* ≤ 0`` out), as the original
does, so the two nets may be measured on different images.

Every problem with the inputs is a :class:`~kdq.function.cli.UserError` that names the flag and the file;
unusable images are not errors but are counted and reported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdq.function.cli import UserError
from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.layout import dataset_kind
from kdq.function.data.masks import Foreground, resolve_foreground
from kdq.function.io.rundir import check_record_types, read_run_json, recorded_path
from kdq.function.metrics.measures import mhat_allowed, screen_sigma
from kdq.function.sigma import layout
from kdq.function.train.schedules import paper_schedule, parse_epochs
from kdq.models import LAYERS

EPOCH_KEYS = ("checkpoints", "epochs", "checkpoint_epochs")
NETS = ("label", "distil")
COMPAT = ("kdq", "original")


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
        listed = set(full)
        unknown = [n for n in effect if n not in listed]
        if unknown:
            raise UserError(f"{flag}: {path / layout.EFFECT_LIST} names {len(unknown)} image(s) missing from "
                            f"{layout.FULL_LIST} (first: {unknown[0]})")
        meta: dict[str, Any] = {}
        if (path / "run.json").is_file():
            try:
                meta = json.loads((path / "run.json").read_text())
            except ValueError as exc:
                raise UserError(f"{flag}: {path / 'run.json'} is not valid JSON ({exc})") from None
            meta = check_record_types(meta, path / "run.json") if isinstance(meta, dict) else {}
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
        path = layout.array_path(self.path, self.index[name], "best_sigma_entropy")
        arr = load_npy(path, self.flag, f" (image {name})")
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or not np.issubdtype(arr.dtype, np.number):
            raise UserError(f"{self.flag}: {path} has shape {arr.shape} ({arr.dtype}); expected (K, 1, g, g)")
        return arr.astype(np.float64)


def npy_header(path: Path, flag: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an ``.npy`` header, checked against the file: a header that claims more data than the
    file holds (a damaged file, or one made to exhaust memory) or a dtype that is not a real number is refused."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            data_bytes = Path(path).stat().st_size - fh.tell()
    except (ValueError, OSError, SyntaxError) as exc:
        raise UserError(f"{flag}: cannot read {path} ({exc})") from None
    if dtype.hasobject or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise UserError(f"{flag}: {path} holds {dtype} values; expected real numbers")
    if int(np.prod(shape, dtype=object)) * dtype.itemsize > data_bytes:
        raise UserError(f"{flag}: {path} claims shape {shape} ({dtype}) but holds only {data_bytes} bytes of data")
    return shape, dtype


def load_npy(path: Path, flag: str, context: str = "") -> np.ndarray:
    """``np.load`` without pickle, after :func:`npy_header`; a missing or unreadable file is a UserError naming
    ``flag``."""
    if not path.is_file():
        raise UserError(f"{flag}: {path} is missing{context}")
    npy_header(path, flag)
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
    if (wd[row, :max(epochs) + 1] < 0).any():
        raise UserError(f"{flag}: {path} holds negative weight distances in the analysed layer's row (a distance "
                        "is a norm: the file is damaged)")
    return wd[row].astype(np.float64)


def pick_folder(folder: Path, layer: str, marker: str) -> Path:
    """``<folder>/<layer>`` when it holds ``marker`` (one run per layer), else ``folder`` itself."""
    sub = Path(folder) / layer
    return sub if (sub / marker).is_file() else Path(folder)


def training_run(flag: str, given: Path | None, sigma: SigmaRun, layer: str) -> Path:
    """The training run a net's weight distances come from: ``given`` (checked against what the sigma run
    records) or the one the sigma run records."""
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


def run_length(run: Path, flag: str) -> int:
    """The number of epochs a training run holds (its ``weight_diff.npy`` columns − 1)."""
    path = run / "weight_diff.npy"
    if not path.is_file():
        raise UserError(f"{flag}: {path} is missing")
    shape, _ = npy_header(path, flag)
    if len(shape) != 2:
        raise UserError(f"{flag}: {path} has shape {shape}; expected (4, epochs+1), rows conv fc1 fc2 fc3")
    return int(shape[-1]) - 1


def net_epochs(sigma: SigmaRun, run: Path, spec: list[str] | None, spec_flag: str,
               run_flag: str) -> tuple[list[int], str]:
    """The epochs of one sigma run's K entries and where they came from: ``spec`` (``--checkpoints E…`` or
    ``paper``: the schedule of that net's training run, 0 2 5 … 150 or … 400, as the original's
    ``choose_ckpt_list``), else what its run.json records."""
    recorded = sigma.recorded_epochs()
    if spec is None:
        if recorded is None:
            raise UserError(f"{sigma.flag}: {sigma.path} does not record its checkpoint epochs (no run.json): pass "
                            f"{spec_flag} E1 E2 ... (one per sigma entry, oldest first) or {spec_flag} paper")
        return recorded, "run.json"
    if spec == ["paper"]:
        total = run_length(run, run_flag)
        epochs, source = paper_schedule(total), f"{spec_flag} paper ({total} epochs)"
    else:
        try:
            epochs, source = parse_epochs(spec, None, spec_flag), spec_flag
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if [int(e) for e in spec] != epochs:
            raise UserError(f"{spec_flag} must be distinct epochs ≥ 0 in increasing order, got {' '.join(spec)}")
    if recorded is not None and recorded != epochs:
        raise UserError(f"{spec_flag} {epochs} disagrees with the epochs {sigma.flag} records: {recorded}")
    return epochs, source


def common_effective(label: SigmaRun, distil: SigmaRun) -> list[str]:
    """The images effective in both runs, each once, in the label run's order."""
    in_distil = set(distil.effect)
    return list(dict.fromkeys(n for n in label.effect if n in in_distil))


@dataclass(frozen=True)
class Request:
    """What the metrics stage was asked for one analysis (its flags), to be resolved per layer."""
    label_run: Path | None = None
    distil_run: Path | None = None
    # net → (its --checkpoints words or None, the flag they came from)
    checkpoints: dict[str, tuple[list[str] | None, str]] = field(
        default_factory=lambda: {net: (None, "--checkpoints") for net in NETS})
    grid: int | None = None
    arch: str | None = None
    image_size: int | None = None
    foreground: str = "auto"
    missing_mask: str = "auto"
    exact_masks: bool = False
    mask_pad: float | None = None
    mhat_skip_epoch0: str = "auto"
    compat: str = "kdq"


@dataclass
class NetData:
    """One net's inputs at one layer, read and checked."""
    key: str  # "label" or "distil"
    sigma: SigmaRun
    run: Path  # the training run
    epochs: list[int]
    epochs_source: str
    wd_row: np.ndarray  # the layer's row of weight_diff.npy
    names: list[str]  # the images this net is measured on
    maps: np.ndarray  # (N, K, g, g) σ*
    fg: np.ndarray  # (N, g, g) foreground cells
    allowed: np.ndarray  # (K,) bool: checkpoints m̂ may pick


@dataclass
class LayerInputs:
    """Everything one layer's analysis needs, read and checked (nothing logged yet)."""
    layer: str
    nets: dict[str, NetData]
    both: int  # images effective in both runs
    skipped: dict[str, str]  # image → why it is left out (of both nets, or of one in compat mode)
    paired: bool  # both nets are measured on the same images
    size: int
    grid: int
    skip0: bool
    compat: str
    foreground: Foreground
    fallback: list[str]  # images without a mask that use the central square
    data_root: str
    split: str
    warnings: list[str]
    notes: list[str]


def family_and_size(req: Request, sigmas: list[SigmaRun], runs: list[Path], warnings: list[str],
                    notes: list[str]) -> tuple[str | None, int]:
    """The architecture family (for the ResNet m̂ rule) and the input size S (for the masks): from ``--arch`` and
    ``--image-size``, else from what the sigma or training runs record (``model``: arch, family, image size)."""
    from kdq.function.archs import recorded_model, resolve_arch

    if req.arch:
        info = resolve_arch(req.arch, image_size=req.image_size)
        return info.family, req.image_size or info.input_size
    records = [sr.meta for sr in sigmas] + [read_run_json(run) for run in runs]
    model = next((m for m in map(recorded_model, records) if m), None)
    family, size = (model or {}).get("family"), req.image_size or (model or {}).get("image_size")
    size = size or sigmas[0].recorded("image_size", "input_size")
    if model and (family is None or size is None):  # a run of an older kdq: the registry knows the name
        from kdq.models import ARCHS

        info = ARCHS.get(model["arch"])
        if info is None:
            warnings.append(f"architecture {model['arch']!r} is not in the registry: pass --image-size and "
                            "--mhat-skip-epoch0")
        else:
            family, size = family or info.family, size or info.input_size
    if size is None:
        size = 224
        notes.append("input size S unknown (no --arch/--image-size, nothing recorded): S = 224 assumed for the masks")
        warnings.append(notes[-1])
    if family is None and req.mhat_skip_epoch0 == "auto":
        notes.append("architecture unknown: m̂ includes epoch 0 (pass --arch or --mhat-skip-epoch0 for a ResNet)")
    return family, int(size)


def _foreground(req: Request, runs: list[SigmaRun], data: MaskedImageFolder) -> Foreground:
    """The foreground rule: each flag's value, or for ``auto``/unset what the sigma runs recorded (they must
    agree), else what the dataset's kind implies."""
    def recorded(key):
        values = {json.dumps(run.recorded(key)) for run in runs} - {"null"}
        if len(values) > 1:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"the sigma runs used different {flag} ({' vs '.join(sorted(values))}); pass {flag}")
        return json.loads(values.pop()) if values else None

    source = req.foreground if req.foreground != "auto" else (recorded("foreground") or "auto")
    missing = req.missing_mask if req.missing_mask != "auto" else (recorded("missing_mask") or "auto")
    exact = req.exact_masks or bool(recorded("exact_masks"))
    pad = req.mask_pad if req.mask_pad is not None else float(recorded("mask_pad") or 1.0)
    return resolve_foreground(source, missing, dataset_kind(data.root), exact, pad)


def foreground_cells(data: MaskedImageFolder, names: list[str], rule: Foreground, size: int,
                     grid: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """(g, g) foreground cells of every image of ``names`` by the rule, and the images that got the central
    square for a missing mask."""
    cells, fallback = {}, []
    for name in names:
        i = data.index_of(name)
        values = None if rule.source == "central" else data.mask_values(i)
        try:
            cells[name], central = rule.cells(values, size, grid)
        except ValueError:
            raise UserError(f"--data: missing mask for image {name} (expected {data.mask_path(i)}; "
                            "--missing-mask central uses the central square)") from None
        if central:
            fallback.append(name)
    return cells, fallback


def load_layer(req: Request, layer: str, data: MaskedImageFolder, label_sigma: Path,
               distil_sigma: Path) -> LayerInputs:
    """Read and check one layer's inputs; every problem is a UserError, nothing is logged here."""
    if req.compat not in COMPAT:
        raise UserError(f"--compat must be one of {', '.join(COMPAT)}, got {req.compat!r}")
    sigmas = {"label": SigmaRun.open(label_sigma, "--label-sigma"), "distil": SigmaRun.open(distil_sigma,
                                                                                             "--distil-sigma")}
    for sr in sigmas.values():
        recorded = sr.recorded("layer")
        if recorded is not None and recorded != layer:
            raise UserError(f"{sr.flag}: {sr.path} was fitted at layer {recorded}, not {layer}")
    grids = {sr.flag: sr.recorded("grid") for sr in sigmas.values()}
    if None not in grids.values() and len({int(g) for g in grids.values()}) > 1:
        (fa, ga), (fb, gb) = grids.items()
        raise UserError(f"the sigma runs were fitted with different grids: {fa} {ga}x{ga} vs {fb} {gb}x{gb}")
    given = {"label": req.label_run, "distil": req.distil_run}
    runs = {net: training_run(f"--{net}-run", given[net], sigmas[net], layer) for net in NETS}
    epochs = {net: net_epochs(sigmas[net], runs[net], *req.checkpoints[net], f"--{net}-run") for net in NETS}
    names = common_effective(sigmas["label"], sigmas["distil"])
    if not names:
        raise UserError(f"no image is effective in both sigma runs (--label-sigma: {len(sigmas['label'].effect)} "
                        f"effective, --distil-sigma: {len(sigmas['distil'].effect)} effective, none in common)")
    maps = {net: _read_maps(sigmas[net], names, epochs[net][0], req.grid) for net in NETS}
    grid = next(iter(maps["label"].values())).shape[-1]
    other = next(iter(maps["distil"].values())).shape[-1]
    if grid != other:
        raise UserError(f"the sigma runs were fitted with different grids: --label-sigma {grid}x{grid} vs "
                        f"--distil-sigma {other}x{other}")
    row = LAYERS.index(layer)
    wd = {net: load_weight_diff(runs[net], f"--{net}-run", epochs[net][0], row) for net in NETS}

    warnings: list[str] = []
    notes: list[str] = []
    family, size = family_and_size(req, [sigmas["label"], sigmas["distil"]], [runs["label"], runs["distil"]],
                                   warnings, notes)
    skip0 = {"yes": True, "no": False}.get(req.mhat_skip_epoch0, family == "resnet")

    # which images each net is measured on
    skipped: dict[str, str] = {}
    kept = {net: [] for net in NETS}
    for name in names:
        reasons = {net: screen_sigma(maps[net][name]) for net in NETS}
        if req.compat == "original":
            for net in NETS:  # the original drops, per net, an image whose min σ* is ≤ 0
                if reasons[net] is None:
                    kept[net].append(name)
                else:
                    skipped[name] = "; ".join(f"{n}: {r}" for n, r in reasons.items() if r)
        elif any(reasons.values()):
            skipped[name] = "; ".join(f"{n}: {r}" for n, r in reasons.items() if r)
        else:
            for net in NETS:
                kept[net].append(name)
    for net in NETS:
        if not kept[net]:
            raise UserError(f"none of the {len(names)} image(s) effective in both runs has a usable σ* in the "
                            f"{net} run (all hold NaN/inf or values ≤ 0)")
    rule = _foreground(req, list(sigmas.values()), data)
    cells, fallback = foreground_cells(data, list(dict.fromkeys(kept["label"] + kept["distil"])), rule, int(size),
                                       grid)
    nets = {}
    for net in NETS:
        net_epochs_, source = epochs[net]
        allowed = mhat_allowed(net_epochs_, skip0)
        if skip0 and set(net_epochs_) == {0}:
            notes.append(f"{net} net: m̂: epoch 0 is the only checkpoint, so it is kept")
        nets[net] = NetData(net, sigmas[net], runs[net], net_epochs_, source, wd[net], kept[net],
                            np.stack([maps[net][n] for n in kept[net]]), np.stack([cells[n] for n in kept[net]]),
                            allowed)
    paired = kept["label"] == kept["distil"]
    _describe(nets, names, skipped, fallback, rule, req.compat, paired, notes, warnings)
    return LayerInputs(layer, nets, len(names), skipped, paired, int(size), grid, skip0, req.compat, rule, fallback,
                       str(data.root), data.split, warnings, notes)


def _read_maps(run: SigmaRun, names: list[str], epochs: list[int], grid: int | None) -> dict[str, np.ndarray]:
    """σ* of every image of ``names`` in one run, checked against the run's epochs and ``--grid``."""
    maps, shape = {}, None
    for name in names:
        arr = run.sigma(name)
        if shape is None:
            shape = arr.shape
            K, g = shape[0], shape[-1]
            if grid is not None and grid != g:
                raise UserError(f"--grid {grid} but {run.flag} {run.path} holds a {g}x{g} grid")
            if len(epochs) != K:
                raise UserError(f"{run.flag}: the sigma files hold {K} checkpoints but the epochs given are "
                                f"{len(epochs)}: {epochs}")
        elif arr.shape != shape:
            raise UserError(f"{run.flag}: image {name} has σ* of shape {arr.shape}, others {shape}")
        maps[name] = arr
    return maps


def _describe(nets: dict[str, NetData], names: list[str], skipped: dict[str, str], fallback: list[str],
              rule: Foreground, compat: str, paired: bool, notes: list[str], warnings: list[str]) -> None:
    """The notes and warnings of a layer's inputs (what was left out, and why)."""
    if rule.source == "central":
        notes.append("foreground: the central square (rows and columns int(g/6)..int(5g/6)) for every image")
    if fallback:
        notes.append(f"{len(fallback)} image(s) without a mask use the central square")
    for net, d in nets.items():
        flat = d.fg.reshape(len(d.fg), -1)
        if int(flat.all(axis=1).sum()):
            notes.append(f"{net} net: {int(flat.all(axis=1).sum())} image(s) have no background cell and do not "
                         "enter the baseline H̄_bg" + (" (the original's mean turns it into NaN)"
                                                     if compat == "original" else ""))
        if int((~flat.any(axis=1)).sum()):
            notes.append(f"{net} net: {int((~flat.any(axis=1)).sum())} image(s) have no foreground cell "
                         "(N_fg = 0, ρ = 0 for them)")
    if skipped:
        scope = "of the net whose σ* it is (the original's per-net filter)" if compat == "original" else \
            "of both nets"
        notes.append(f"{len(skipped)} image(s) left out {scope} for NaN/inf or σ* ≤ 0: "
                     + ", ".join(f"{n} ({r})" for n, r in list(skipped.items())[:5])
                     + (" …" if len(skipped) > 5 else ""))
        warnings += [f"leaving out {name}: σ* is {why}" for name, why in skipped.items()]
        warnings.append(f"left out {len(skipped)} of {len(names)} images effective in both runs (NaN/inf or σ* ≤ 0)")
    if not paired:
        notes.append(f"the nets are measured on different images (label {len(nets['label'].names)}, distil "
                     f"{len(nets['distil'].names)}): their bootstrap resamples each net's images on its own")


def layer_dirs(layer: str, label_sigma: Path, distil_sigma: Path) -> list[tuple[str, Path, Path]]:
    """``(layer, label sigma run, distil sigma run)`` for one layer, or for every layer with ``all``."""
    if layer != "all":
        return [(layer, pick_folder(label_sigma, layer, "full_name_list.txt"),
                 pick_folder(distil_sigma, layer, "full_name_list.txt"))]
    found = []
    for name in LAYERS:
        a, b = label_sigma / name, distil_sigma / name
        if (a / "full_name_list.txt").is_file() and (b / "full_name_list.txt").is_file():
            found.append((name, a, b))
    if not found:
        raise UserError(f"--layer all: no layer has sigma runs in both {label_sigma}/<layer> and "
                        f"{distil_sigma}/<layer> (layers: {', '.join(LAYERS)})")
    return found
