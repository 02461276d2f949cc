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

from kdq.function.checks import CheckError, check_epochs, check_weight_distances
from kdq.function.cli import UserError
from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.layout import dataset_kind
from kdq.function.data.masks import Foreground, resolve_foreground
from kdq.function.io.rundir import check_record_types, read_run_json, recorded_path
from kdq.function.metrics.config import COMPAT, NETS, MetricsConfig
from kdq.function.metrics.measures import mhat_allowed, screen_sigma
from kdq.function.sigma import layout
from kdq.function.train.schedules import paper_schedule, parse_epochs
from kdq.models import LAYERS, family_defaults

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

    @property
    def units(self) -> bool:
        """True for a sigma run of tokens or points (σ* per unit, ``(K, 1, 1, U)``)."""
        return self.recorded("modality") in ("text", "points")

    def sigma(self, name: str) -> np.ndarray:
        """σ* of one image as float64 (K, g, g) (tokens, points: (K, 1, U)); UserError when the file is missing or
        malformed."""
        path = layout.array_path(self.path, self.index[name], "best_sigma_entropy")
        arr = load_npy(path, self.flag, f" (image {name})")
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        square = arr.ndim == 3 and arr.shape[1] == arr.shape[2]
        if self.units:
            square = arr.ndim == 3 and arr.shape[1] == 1
        if not square or not np.issubdtype(arr.dtype, np.number):
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
    layer = LAYERS[row]
    if np.isnan(wd[row, :max(epochs) + 1]).all() and not_tapped(read_run_json(run), layer):
        raise UserError(f"{flag}: {run} recorded no weight distance for layer {layer} (its row of weight_diff.npy is "
                        f"NaN: its taps named no {layer} weight); analyse a layer the training run tapped, retrain "
                        f"with --taps naming a {layer} weight, or run kdq-weight-distance --checkpoints {run} "
                        f"--taps {layer}=<module> --out <new run> (distances between its snapshots) and fit the "
                        "sigma run on that run")
    try:  # the rule kdq.compare applies to its D_label and D_distil
        check_weight_distances(f"{flag}: {path}", wd[row, :max(epochs) + 1], " in the analysed layer's row")
    except CheckError as exc:
        raise UserError(f"{exc}: the file is damaged") from None
    return wd[row].astype(np.float64)


def not_tapped(record: dict[str, Any], layer: str) -> bool:
    """A training run's run.json records its taps (``model.taps``) and none at ``layer``: it tracked no weight there."""
    from kdq.function.metrics.caveats import tap_node

    taps = (record.get("model") or {}).get("taps")
    return isinstance(taps, str) and bool(taps) and tap_node(record, layer) is None


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
        try:  # the rule of kdq.compare's epochs_label and epochs_distil
            check_epochs(spec_flag, [int(e) for e in spec])
        except CheckError as exc:
            raise UserError(str(exc)) from None
    if recorded is not None and recorded != epochs:
        raise UserError(f"{spec_flag} {epochs} disagrees with the epochs {sigma.flag} records: {recorded}")
    return epochs, source


def common_effective(label: SigmaRun, distil: SigmaRun) -> list[str]:
    """The images effective in both runs, each once, in the label run's order."""
    in_distil = set(distil.effect)
    return list(dict.fromkeys(n for n in label.effect if n in in_distil))


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
    maps: np.ndarray  # (N, K, g, g) σ* (tokens, points: (N, K, 1, U), NaN beyond an input's units)
    fg: np.ndarray  # (N, g, g) foreground cells
    allowed: np.ndarray  # (K,) bool: checkpoints m̂ may pick
    record: dict[str, Any] = field(default_factory=dict)  # the training run's run.json (read once)
    valid: np.ndarray | None = None  # (N, 1, U) bool for tokens and points: the units; None for images


@dataclass
class LayerInputs:
    """Everything one layer's analysis needs, read and checked (nothing logged yet).  Each net has one or more
    training runs (``runs[net]``, one sigma run each), all measured on the same images."""
    layer: str
    runs: dict[str, list[NetData]]
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

    @property
    def nets(self) -> dict[str, NetData]:
        """Each net's first run (the only one unless several training runs were given)."""
        return {net: runs[0] for net, runs in self.runs.items()}


def family_and_size(req: MetricsConfig, sigmas: list[SigmaRun], training: list[dict[str, Any]], warnings: list[str],
                    notes: list[str]) -> tuple[str | None, int]:
    """The architecture family (for the ResNet m̂ rule) and the input size S (for the masks): from ``--arch`` and
    ``--image-size``, else from what the sigma or training runs record (``model``: arch, family, image size)."""
    from kdq.function.archs import recorded_model, resolve_arch

    if req.arch:
        info = resolve_arch(req.arch, image_size=req.image_size)
        return info.family, req.image_size or info.input_size
    records = [sr.meta for sr in sigmas] + list(training)
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


def _foreground(req: MetricsConfig, runs: list[SigmaRun], data: MaskedImageFolder) -> Foreground:
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


def _open_sigmas(net: str, paths: list[Path], layer: str) -> list[SigmaRun]:
    """A net's sigma runs (one per training run), each checked to be fitted at ``layer``; the same folder twice
    is refused."""
    flag = f"--{net}-sigma"
    runs = [SigmaRun.open(path, flag) for path in paths]
    for sr in runs:
        recorded = sr.recorded("layer")
        if recorded is not None and recorded != layer:
            raise UserError(f"{sr.flag}: {sr.path} was fitted at layer {recorded}, not {layer}")
    refuse_twice(flag, [sr.path for sr in runs], "are the same sigma run given twice")
    return runs


def refuse_twice(flag: str, paths: list[Path], why: str) -> None:
    """A UserError naming the first two of ``paths`` that are one folder (any spelling), ``why`` after them."""
    seen: dict[Path, Path] = {}
    for path in map(Path, paths):
        key = path.resolve()
        if key in seen:
            raise UserError(f"{flag}: {seen[key]} and {path} {why}")
        seen[key] = path


def _check_same(what: str, values: dict[str, Any], hint: str) -> None:
    """Refuse runs that differ in ``what`` (runs named by their flag and path → value; None = not recorded)."""
    known = {k: v for k, v in values.items() if v is not None}
    if len({json.dumps(v, sort_keys=True, default=str) for v in known.values()}) > 1:
        shown = "; ".join(f"{k}: {v}" for k, v in known.items())
        raise UserError(f"the sigma runs mix {what} ({shown}); {hint}")


# what may differ between training runs of one net: the seed, where the run went, and which teacher checkpoint a
# student learned from (another training of the same teacher is training randomness too)
PER_RUN_SETTINGS = frozenset({"seed", "out", "checkpoints", "teacher_checkpoint"})


def _training_settings(record: dict) -> dict[str, Any]:
    """The settings of a training run that define what it computes (its stage config's result fields), the per-run
    ones aside."""
    from kdq.function.train.config import TRAINING_CONFIGS

    settings = record.get("settings") or {}
    config = TRAINING_CONFIGS.get(record.get("stage"))
    results = set(config.result_settings()) if config is not None else set(settings)
    return {k: v for k, v in settings.items() if k in results and k not in PER_RUN_SETTINGS}


def check_training_runs(net: str, runs: list[Path], records: list[dict[str, Any]]) -> list[str]:
    """Several training runs of one net (``records``: their run.json) must be *different* runs (other folders,
    other ``--seed``) of the *same* setting (every other result-defining setting equal); notes for runs that record
    nothing to check."""
    notes: list[str] = []
    if len(runs) < 2:
        return notes
    flag = f"--{net}-run"
    refuse_twice(flag, runs, "are the same training run: several runs of a net must be separate trainings "
                             "(another --seed)")
    records = dict(zip(map(Path, runs), records))
    with_settings = {run: rec for run, rec in records.items() if rec.get("settings")}
    if len(with_settings) < len(records):
        notes.append(f"{net} net: {len(records) - len(with_settings)} training run(s) record no settings: kdq cannot "
                     "check that they differ only in --seed")
    seeds: dict[Any, Path] = {}
    for run, rec in with_settings.items():
        seed = rec["settings"].get("seed")
        if seed in seeds:
            raise UserError(f"{flag}: {seeds[seed]} and {run} were both trained with --seed {seed}: several runs of a "
                            "net must differ in their seed")
        seeds[seed] = run
    if with_settings:
        first_run, first = next(iter(with_settings.items()))
        base = _training_settings(first)
        for run, rec in list(with_settings.items())[1:]:
            other = _training_settings(rec)
            diffs = sorted(k for k in base.keys() | other.keys() if base.get(k) != other.get(k))
            if diffs:
                shown = ", ".join(f"--{k.replace('_', '-')} {base.get(k)!r} vs {other.get(k)!r}" for k in diffs[:4])
                raise UserError(f"{flag}: {first_run} and {run} are not runs of the same setting ({shown}): several "
                                "runs of a net may differ only in --seed")
    return notes


def _given_runs(net: str, given: tuple[Path, ...] | None, n: int) -> list[Path | None]:
    """``--<net>-run`` values, one per sigma run (or none given: what each sigma run records)."""
    if given is None:
        return [None] * n
    if len(given) != n:
        raise UserError(f"--{net}-run: {len(given)} training run(s) for {n} sigma run(s) of --{net}-sigma; give one "
                        f"per sigma run, in the same order (or leave --{net}-run out to use what they record)")
    return list(given)


def _training_runs(req: MetricsConfig, sigmas: dict[str, list[SigmaRun]], layer: str, several: bool):
    """Each net's training runs (given, or recorded in its sigma runs), their run.json and the notes of their
    checks; several runs of a net must share the architecture and the dataset."""
    given = {"label": req.label_run, "distil": req.distil_run}
    runs = {net: [training_run(f"--{net}-run", g, sr, layer)
                  for g, sr in zip(_given_runs(net, given[net], len(sigmas[net])), sigmas[net])] for net in NETS}
    records = {net: [read_run_json(run) for run in runs[net]] for net in NETS}
    notes: list[str] = []
    for net in NETS:
        notes += check_training_runs(net, runs[net], records[net])
        if several:
            _check_same(f"architectures in the {net} net's runs",
                        {f"--{net}-run {run}": (rec.get("model") or {}).get("arch") or (rec.get("settings") or {}).get("arch")
                         for run, rec in zip(runs[net], records[net])}, "pool runs of one architecture")
            _check_same(f"datasets in the {net} net's runs",
                        {f"{sr.flag} {sr.path}": [sr.recorded("data"), sr.recorded("split")] for sr in sigmas[net]},
                        "pool runs fitted on the same images")
    return runs, records, notes


def _epochs(req: MetricsConfig, sigmas: dict[str, list[SigmaRun]], runs: dict[str, list[Path]]):
    """Per net and run, the epochs of its sigma entries and where they came from; a net's runs share them."""
    spec = req.net_checkpoints()
    epochs = {net: [net_epochs(sr, run, *spec[net], f"--{net}-run") for sr, run in zip(sigmas[net], runs[net])]
              for net in NETS}
    for net in NETS:
        if len({tuple(e) for e, _ in epochs[net]}) > 1:
            shown = "; ".join(f"{sr.path}: {' '.join(map(str, e))}" for sr, (e, _) in zip(sigmas[net], epochs[net]))
            raise UserError(f"--{net}-sigma: the runs hold different checkpoints ({shown}); pool runs of one schedule")
    return epochs


def _one_grid(sigmas: dict[str, list[SigmaRun]], maps: dict[str, list[dict]]) -> int:
    """The grid g every sigma run was fitted on (a UserError naming the runs when they differ); tokens and points:
    the most units an input has."""
    if any(sr.units for net in NETS for sr in sigmas[net]):
        return max(m.shape[-1] for net in NETS for run in maps[net] for m in run.values())
    grids = {(sr.flag if len(sigmas[net]) == 1 else f"{sr.flag} {sr.path}"): next(iter(m.values())).shape[-1]
             for net in NETS for sr, m in zip(sigmas[net], maps[net])}
    if len(set(grids.values())) > 1:
        raise UserError("the sigma runs were fitted with different grids: "
                        + " vs ".join(f"{k} {g}x{g}" for k, g in grids.items()))
    return next(iter(grids.values()))


def load_layer(req: MetricsConfig, layer: str, data: MaskedImageFolder, label_sigma: Path | list[Path],
               distil_sigma: Path | list[Path]) -> LayerInputs:
    """Read and check one layer's inputs; every problem is a UserError, nothing is logged here.
    ``label_sigma``/``distil_sigma``: one sigma run per training run of that net (a single path: one run)."""
    if req.compat not in COMPAT:
        raise UserError(f"--compat must be one of {', '.join(COMPAT)}, got {req.compat!r}")
    paths = {"label": [label_sigma] if isinstance(label_sigma, (str, Path)) else list(label_sigma),
             "distil": [distil_sigma] if isinstance(distil_sigma, (str, Path)) else list(distil_sigma)}
    several = any(len(v) > 1 for v in paths.values())
    if several and req.compat == "original":
        raise UserError("--compat original reproduces the original code, which compares one run per net: give one "
                        "--label-sigma and one --distil-sigma")
    sigmas = {net: _open_sigmas(net, paths[net], layer) for net in NETS}
    every = [sr for net in NETS for sr in sigmas[net]]
    _check_same("grids", {f"{sr.flag} {sr.path}": sr.recorded("grid") for sr in every},
                "every run must be fitted on the same grid")
    runs, records, notes = _training_runs(req, sigmas, layer, several)
    epochs = _epochs(req, sigmas, runs)
    # the images: with one run per net, those effective in both (paired, as the original); with several runs, each
    # run's own effective images (their sets differ from seed to seed), paired only when every run has the same
    names = common_effective(sigmas["label"][0], sigmas["distil"][0]) if not several else \
        list(dict.fromkeys(n for sr in every for n in sr.effect))
    if not names:
        raise UserError(f"no image is effective in both sigma runs (--label-sigma: {len(sigmas['label'][0].effect)} "
                        f"effective, --distil-sigma: {len(sigmas['distil'][0].effect)} effective, none in common)")
    own = {net: [names if not several else list(dict.fromkeys(sr.effect)) for sr in sigmas[net]] for net in NETS}
    for net in NETS:
        for sr, listed in zip(sigmas[net], own[net]):
            if not listed:
                raise UserError(f"{sr.flag}: {sr.path} has no effective image")
    maps = {net: [_read_maps(sr, listed, e[0], req.grid) for sr, listed, e in zip(sigmas[net], own[net], epochs[net])]
            for net in NETS}
    grid = _one_grid(sigmas, maps)
    row = LAYERS.index(layer)
    wd = {net: [load_weight_diff(run, f"--{net}-run", e[0], row) for run, e in zip(runs[net], epochs[net])]
          for net in NETS}

    notes += distance_source_notes(layer, sigmas, records)
    warnings: list[str] = []
    family, size = family_and_size(req, every, [r for net in NETS for r in records[net]], warnings, notes)
    skip0 = {"yes": True, "no": False}.get(req.mhat_skip_epoch0, family_defaults(family).mhat_skip_epoch0)
    skipped, kept = (_screen_runs(maps, own) if several else _screen_pair(maps, names, req.compat))
    units = _unit_modality(every, data)
    shown = list(dict.fromkeys(n for net in NETS for k in kept[net] for n in k))
    if units:
        from kdq.function.sigma.unit_run import FlagForeground

        rule, fallback = FlagForeground(), []
        cells = {name: data.foreground(data.index_of(name)) for name in shown}
    else:
        rule = _foreground(req, every, data)
        cells, fallback = foreground_cells(data, shown, rule, int(size), grid)
    nets: dict[str, list[NetData]] = {}
    for net in NETS:
        net_epochs_, source = epochs[net][0]
        allowed = mhat_allowed(net_epochs_, skip0)
        if skip0 and set(net_epochs_) == {0}:
            notes.append(f"{net} net: m̂: epoch 0 is the only checkpoint, so it is kept")
        nets[net] = [_net_data(net, sr, run, net_epochs_, source, w, k, m, cells, allowed, rec, units)
                     for sr, run, w, m, k, rec in zip(sigmas[net], runs[net], wd[net], maps[net], kept[net],
                                                      records[net])]
    paired = len({tuple(k) for net in NETS for k in kept[net]}) == 1
    _describe({net: nets[net][0] for net in NETS}, names, skipped, fallback, rule, req.compat, paired, notes,
              warnings)
    if several and not paired:
        notes.append("the runs' effective images differ (" + "; ".join(
            f"{net}: " + "/".join(str(len(k)) for k in kept[net]) for net in NETS) + " images): each run is measured "
            "on its own images, and the two-level bootstrap draws every drawn run's images on their own")
    return LayerInputs(layer, nets, len(names), skipped, paired, int(size), grid, skip0, req.compat, rule, fallback,
                       str(data.root), data.split, warnings, notes)


def _unit_modality(sigmas: list[SigmaRun], data) -> bool:
    """True when the sigma runs are of tokens or points (they must all be, and the dataset too)."""
    kinds = {sr.recorded("modality") or "image" for sr in sigmas}
    if len(kinds) > 1:
        raise UserError(f"the sigma runs were fitted on different modalities ({', '.join(sorted(kinds))})")
    fitted, held = kinds.pop(), getattr(data, "modality", "image")
    if fitted != held:
        raise UserError(f"--data {data.root} holds {held} data but the sigma runs were fitted on {fitted}")
    return fitted != "image"


def _net_data(net, sr, run, epochs, source, wd, names, maps, cells, allowed, record, units: bool) -> NetData:
    """One training run's :class:`NetData`; tokens and points side by side with their units padded."""
    if not units:
        return NetData(net, sr, run, epochs, source, wd, names, np.stack([maps[n] for n in names]),
                       np.stack([cells[n] for n in names]), allowed, record)
    from kdq.function.sigma.unit_run import padded_units

    for n in names:
        if maps[n].shape[-1] != cells[n].shape[0]:
            raise UserError(f"{sr.flag}: input {n} has σ* for {maps[n].shape[-1]} units but the dataset gives it "
                            f"{cells[n].shape[0]} foreground flags (another dataset?)")
    stacked, fg, valid = padded_units([maps[n] for n in names], [cells[n] for n in names])
    return NetData(net, sr, run, epochs, source, wd, names, stacked, fg, allowed, record, valid)


def distance_source_notes(layer: str, sigmas: dict[str, list[SigmaRun]], records: dict[str, list[dict]]) -> list[str]:
    """A note for each sigma run fitted at another tap of ``layer`` than its training run recorded (train_sigma
    ``--taps``): σ comes from the sigma run's tap, D from the weight distance the training run recorded there."""
    from kdq.function.metrics.caveats import tap_node

    out = []
    for net in NETS:
        for sr, rec in zip(sigmas[net], records[net]):
            fitted, trained = tap_node(sr.meta, layer), tap_node(rec, layer)
            if fitted and trained and fitted != trained:
                out.append(f"{net} net: σ fitted at {layer} = {fitted} (the sigma run's own tap); D is the weight "
                           f"distance its training run recorded for {layer} (tap {trained})")
    return list(dict.fromkeys(out))


def _screen_pair(maps: dict[str, list[dict[str, np.ndarray]]], names: list[str], compat: str
                 ) -> tuple[dict[str, str], dict[str, list[list[str]]]]:
    """One run per net: the images each net is measured on (paired: an image unusable in either run is left out
    of both; ``compat="original"``: each net drops its own) and why the others are left out."""
    skipped: dict[str, str] = {}
    kept: dict[str, list[str]] = {net: [] for net in NETS}
    for name in names:
        reasons = {net: screen_sigma(maps[net][0][name]) for net in NETS}
        if compat == "original":
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
    return skipped, {net: [kept[net]] for net in NETS}


def _screen_runs(maps: dict[str, list[dict[str, np.ndarray]]], own: dict[str, list[list[str]]]
                 ) -> tuple[dict[str, str], dict[str, list[list[str]]]]:
    """Several runs per net: each run keeps its own effective images whose σ* is usable in it."""
    skipped: dict[str, str] = {}
    kept: dict[str, list[list[str]]] = {net: [] for net in NETS}
    for net in NETS:
        for r, (m, listed) in enumerate(zip(maps[net], own[net])):
            keep = []
            for name in listed:
                reason = screen_sigma(m[name])
                if reason is None:
                    keep.append(name)
                else:
                    skipped[f"{name} ({net} run {r + 1})"] = reason
            if not keep:
                raise UserError(f"--{net}-sigma run {r + 1}: none of its {len(listed)} effective image(s) has a usable "
                                "σ* (all hold NaN/inf or values ≤ 0)")
            kept[net].append(keep)
    return skipped, kept


def _read_maps(run: SigmaRun, names: list[str], epochs: list[int], grid: int | None) -> dict[str, np.ndarray]:
    """σ* of every image of ``names`` in one run, checked against the run's epochs and ``--grid``."""
    maps, shape = {}, None
    for name in names:
        arr = run.sigma(name)
        if shape is None:
            shape = arr.shape
            K, g = shape[0], shape[-1]
            if grid is not None and grid != g and not run.units:
                raise UserError(f"--grid {grid} but {run.flag} {run.path} holds a {g}x{g} grid")
            if len(epochs) != K:
                raise UserError(f"{run.flag}: the sigma files hold {K} checkpoints but the epochs given are "
                                f"{len(epochs)}: {epochs}")
        elif arr.shape != shape and not (run.units and arr.shape[:-1] == shape[:-1]):  # inputs of other lengths
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


def layer_dirs(layer: str, label_sigma: list[Path], distil_sigma: list[Path]
               ) -> list[tuple[str, list[Path], list[Path]]]:
    """``(layer, label sigma runs, distil sigma runs)`` for one layer, or for every layer with ``all`` (a layer
    enters when every given folder holds it).  Each net's list holds one sigma run per training run."""
    label_sigma, distil_sigma = [Path(p) for p in label_sigma], [Path(p) for p in distil_sigma]
    if layer != "all":
        return [(layer, [pick_folder(p, layer, "full_name_list.txt") for p in label_sigma],
                 [pick_folder(p, layer, "full_name_list.txt") for p in distil_sigma])]
    found = []
    for name in LAYERS:
        a, b = [p / name for p in label_sigma], [p / name for p in distil_sigma]
        if all((x / "full_name_list.txt").is_file() for x in a + b):
            found.append((name, a, b))
    if not found:
        raise UserError(f"--layer all: no layer has sigma runs in every {label_sigma[0]}/<layer> and "
                        f"{distil_sigma[0]}/<layer> given (layers: {', '.join(LAYERS)})")
    return found
