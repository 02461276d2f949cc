"""Knowledge planted on purpose: the table of ``make validate`` (docs/validation.md).

    python bench/validate.py --runs runs/validate --data data/validate --layer fc1

Reads what ``make validate`` wrote below ``--runs`` (the demo's stages on a dataset whose train split carries a
class-coded background cue, ``kdq-data --background-cue``) and prints one table, ``experiment | metric |
expected | measured (distil − label) | interval | agrees?``:

- *background shortcut*: first the manipulation check — the label net's top-1 on the cued images against their clean
  twins (regenerated without the cue): does it use the cue at all?  Then ``metrics_<layer>/metrics.json`` (the
  label net trained on the cued split against the student
  distilled from the clean teacher, on the same cued images): N_bg and λ; and, from the two sigma runs' maps and
  the cue masks (``<data>/cue/<split>/...``), how often the cue's cells are concepts against the other background
  cells, by the concept rule of :mod:`kdq.function.metrics.measures`;
- *same run twice*: ``control_same_<layer>.log`` (the metrics stage given one sigma run as both nets: its refusal,
  or ``control_same_<layer>/metrics.json``);
- *shuffled masks*: the label net's maps with each image paired with the next image's mask (as
  ``bench/sigma_fg_bg.py --shuffle-masks``, whose ``fgbg_{masks,shuffled}_<layer>.json`` AUCs are shown too);
- *untrained net*: ``sigma_untrained/<layer>`` (checkpoint 0 alone): the foreground's share of the concepts against
  its share of the cells.

Intervals are 95 % percentile bootstraps over images (``--bootstrap`` resamples, ``--seed``).  *agrees?*: ``yes``
when the interval lies on the expected side (or, for "≈ 0", contains 0), ``direction only`` when just the point
estimate does, ``no`` otherwise, ``n/a`` where an input is missing.  An experiment whose inputs are missing shows
one row saying so; the script never fails for that.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kdq.function.cli import Parser, UserError, existing_dir, positive_int, run, seed
from kdq.function.data.files import read_mask
from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.masks import mask_to_grid
from kdq.function.data.synthetic import CUE_DIR
from kdq.function.io.atomic import write_json
from kdq.function.io.rundir import read_run_json
from kdq.function.metrics.bootstrap import bootstrap, percentile_interval
from kdq.function.metrics.config import MetricsConfig
from kdq.function.metrics.caveats import final_accuracy
from kdq.function.metrics.measures import background_baseline, concept_counts, concept_masks, screen_sigma
from kdq.function.metrics.report import fmt
from kdq.function.sigma import layout
from kdq.function.sigma.effective import entropy_gap, keeps_image, rule_start
from kdq.function.sigma.entropy import entropy_map
from kdq.function.sigma.grid import upsample

HEADER = ("experiment", "metric", "expected", "measured (distil − label)", "interval", "agrees?")
AUC_TOLERANCE = 0.05  # |AUC − 0.5| within which an AUC without interval counts as "no separation"


@dataclass
class Row:
    experiment: str
    metric: str
    expected: str
    measured: str
    interval: str
    agrees: str

    def cells(self) -> list[str]:
        return [self.experiment, self.metric, self.expected, self.measured, self.interval, self.agrees]


def interval_text(lo: float, hi: float) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]"


def agreement(expected_sign: int, value: float, lo: float, hi: float) -> str:
    """Does (value, [lo, hi]) say what was expected?  ``expected_sign``: +1 above 0, −1 below 0, 0 about 0."""
    if not all(np.isfinite([value, lo, hi])):
        return "n/a"
    if expected_sign == 0:
        return "yes" if lo <= 0 <= hi else "no"
    if (expected_sign > 0 and lo > 0) or (expected_sign < 0 and hi < 0):
        return "yes"
    return "direction only" if value * expected_sign > 0 else "no"


EXPECTED_TEXT = {1: "> 0", -1: "< 0", 0: "≈ 0 (interval holds 0)"}


# ---- reading the runs ---------------------------------------------------------------------------------------

def default_b() -> float:
    """The metrics stage's concept threshold b by default (its --b), for a run whose metrics.json records none."""
    return MetricsConfig.b


def read_json_file(path: Path) -> dict | list | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def verdict_text(row: dict) -> str:
    """A metrics row's verdict, or why it has none ("no verdict: ..."), or "-" for a metric without a prediction."""
    if row.get("verdict"):
        return str(row["verdict"])
    return f"no verdict: {row['no_verdict']}" if row.get("no_verdict") else "-"


def layer_metrics(metrics: dict, layer: str) -> dict:
    """metric key → its row (label, distil, difference, difference_ci, verdict, ...) in a metrics.json."""
    layers = metrics.get("layers") or {}
    found = layers.get(layer) or (next(iter(layers.values())) if len(layers) == 1 else {})
    return found.get("metrics") or {}


@dataclass
class Maps:
    """One sigma run's maps at its checkpoints for a list of images, with their foreground and cue cells."""
    names: list[str]
    H: np.ndarray  # (N, K, g, g) entropy maps
    fg: np.ndarray  # (N, g, g) foreground cells (the sigma stage's mask rule)
    cue: np.ndarray  # (N, g, g) cells holding any pixel of the cue (False without cue masks)
    sigma: np.ndarray | None = None  # (N, K, g, g) σ* itself
    epochs: list[int] | None = None  # the K checkpoints' epochs
    total_epochs: int | None = None  # the training run's length


def sigma_record(run_dir: Path) -> dict:
    record = read_run_json(run_dir)
    return {**(record.get("settings") or {}), **{k: v for k, v in record.items() if k != "settings"}}


def usable_names(run_dir: Path) -> list[str]:
    """The run's effective images whose σ* are usable at every checkpoint (the metrics stage's screen)."""
    full = layout.read_names(run_dir / layout.FULL_LIST)
    index = {name: i for i, name in reversed(list(enumerate(full)))}
    return [n for n in layout.read_names(run_dir / layout.EFFECT_LIST)
            if n in index and screen_sigma(load_sigma(run_dir, index[n])) is None]


def load_sigma(run_dir: Path, i: int) -> np.ndarray:
    """σ* of image ``i`` of the run, (K, g, g)."""
    return np.load(layout.image_folder(run_dir, i, True) / "npy_files" / "best_sigma_entropy.npy")[:, 0]


def cells_touched(values: np.ndarray, size: int, grid: int) -> np.ndarray:
    """(g, g) bool: the cells holding any pixel > 0 of ``values`` once resized to the input (S × S, PIL bilinear,
    as the image), a pixel belonging to the cell the σ grid's nearest upsampling gives it."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L").resize(
        (size, size), Image.BILINEAR)) > 0
    cell_of = upsample(np.arange(grid * grid, dtype=np.int64).reshape(grid, grid), size)
    touched = np.zeros(grid * grid, dtype=bool)
    touched[np.unique(cell_of[resized])] = True
    return touched.reshape(grid, grid)


def load_maps(run_dir: Path, data: Path, split: str, names: list[str]) -> Maps:
    """The maps of ``names`` in a sigma run, their foreground cells (the run's own mask rule) and cue cells."""
    rec = sigma_record(run_dir)
    size, exact = rec.get("image_size") or rec.get("input_size"), bool(rec.get("exact_masks"))
    if not size:
        raise UserError(f"--runs: {run_dir} records no image size in its run.json")
    full = layout.read_names(run_dir / layout.FULL_LIST)
    index = {name: i for i, name in reversed(list(enumerate(full)))}
    sigma = np.stack([load_sigma(run_dir, index[n]) for n in names])
    H = entropy_map(sigma)
    g = H.shape[-1]
    ds = MaskedImageFolder(data, split)
    fg, cue = [], []
    for n in names:
        seg = ds.mask_values(ds.index_of(n))
        if seg is None:
            raise UserError(f"--data: no mask {ds.mask_path(ds.index_of(n))} for {n} of {run_dir}")
        fg.append(mask_to_grid(seg, size, g, exact=exact))
        mark = data / CUE_DIR / split / Path(n).with_suffix(".png")
        cue.append(cells_touched(read_mask(mark), size, g) if mark.is_file() else np.zeros((g, g), bool))
    return Maps(names, H, np.array(fg), np.array(cue), sigma, rec.get("checkpoints"), rec.get("total_epochs"))


# ---- the analyses of the maps, with the metrics' concept rule ------------------------------------------------

def last_concepts(H: np.ndarray, fg: np.ndarray, b: float, idx: np.ndarray | None = None) -> np.ndarray:
    """(n, g, g) concept cells at the last checkpoint of the images ``idx`` (default all), the baseline H̄_bg
    recomputed over those images as in the metrics stage."""
    idx = np.arange(H.shape[0]) if idx is None else idx
    H, fg = H[idx], fg[idx]
    return concept_masks(H, background_baseline(H, fg), b)[:, -1]


def cue_rates(maps: Maps, b: float, idx: np.ndarray | None = None) -> tuple[float, float]:
    """(concept rate of the cue's background cells, concept rate of the other background cells) at the last
    checkpoint: concept cells / cells, pooled over the images ``idx``."""
    idx = np.arange(len(maps.names)) if idx is None else idx
    c = last_concepts(maps.H, maps.fg, b, idx)
    cue = maps.cue[idx] & ~maps.fg[idx]
    other = ~maps.cue[idx] & ~maps.fg[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        return float((c & cue).sum() / cue.sum()), float((c & other).sum() / other.sum())


def fg_share_excess(H: np.ndarray, fg: np.ndarray, b: float, idx: np.ndarray | None = None) -> np.ndarray:
    """[fg share of the concepts − fg share of the cells, fg share of the concepts, fg share of the cells] at the
    last checkpoint, pooled over the images ``idx``: 0 when concepts fall in proportion to area."""
    idx = np.arange(H.shape[0]) if idx is None else idx
    concepts = concept_masks(H[idx], background_baseline(H[idx], fg[idx]), b)
    n_fg, n_bg = concept_counts(concepts, fg[idx])
    total = n_fg[:, -1].sum() + n_bg[:, -1].sum()
    concept_share = n_fg[:, -1].sum() / total if total else float("nan")
    cell_share = fg[idx].mean()
    return np.array([concept_share - cell_share, concept_share, cell_share])


def boot(statistic, n: int, n_boot: int, seed_: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, lo, hi) of a vector statistic of image indices, percentile bootstrap over images."""
    point, reps = bootstrap(lambda idx, _: statistic(idx), n, n, n_boot, seed_)
    lo, hi = percentile_interval(reps)
    return point, lo, hi


# ---- the experiments ------------------------------------------------------------------------------------------

def missing_row(experiment: str, what: str) -> Row:
    return Row(experiment, "-", "-", f"not run: {what} missing", "-", "n/a")


def shortcut_metric_rows(metrics_path: Path, layer: str) -> list[Row]:
    """N_bg and λ of the label net (cued split) against the student of the clean teacher, from the metrics run."""
    metrics = read_json_file(metrics_path)
    if not isinstance(metrics, dict):
        return [missing_row("background shortcut", str(metrics_path))]
    rows = layer_metrics(metrics, layer)
    out = []
    for key, name, sign, expected in (("N_bg", "N_bg", -1, "distil < label"), ("lambda", "λ", 1, "distil > label")):
        r = rows.get(key)
        if not r:
            out.append(Row("background shortcut", name, expected, f"not in {metrics_path}", "-", "n/a"))
            continue
        lo, hi = r.get("difference_ci") or (None, None)
        diff = r.get("difference")
        values = [np.nan if v is None else float(v) for v in (diff, lo, hi)]
        out.append(Row("background shortcut", name, expected,
                       f"{fmt(values[0])} (label {fmt(r.get('label'))}, distil {fmt(r.get('distil'))}; "
                       f"verdict: {verdict_text(r)})", interval_text(values[1], values[2]),
                       agreement(sign, *values)))
    return out


def cue_rows(label: Maps | None, distil: Maps | None, b: float, n_boot: int, seed_: int) -> list[Row]:
    """How often the cue's cells are concepts, against the other background cells, for the label net; and the
    cue's rate, distil − label, on the images both runs share."""
    if label is None or distil is None:
        return [missing_row("background shortcut", "the sigma runs")]
    if not label.cue.any():
        return [missing_row("background shortcut", f"the cue masks ({CUE_DIR}/)")]
    n = len(label.names)
    point, lo, hi = boot(lambda idx: -np.diff(cue_rates(label, b, idx)), n, n_boot, seed_)
    cue_rate, other_rate = cue_rates(label, b)
    rows = [Row("background shortcut", "concept rate: cue cells − other bg cells (label net)", "> 0",
                f"{fmt(point[0])} (cue {fmt(cue_rate)}, other bg {fmt(other_rate)}; {n} images)",
                interval_text(lo[0], hi[0]), agreement(1, point[0], lo[0], hi[0]))]
    d_cue, d_other = cue_rates(distil, b)
    point, lo, hi = boot(lambda idx: np.array([cue_rates(distil, b, idx)[0] - cue_rates(label, b, idx)[0]]),
                         n, n_boot, seed_)
    rows.append(Row("background shortcut", "concept rate of the cue cells", "distil < label",
                    f"{fmt(point[0])} (distil: cue {fmt(d_cue)}, other bg {fmt(d_other)})",
                    interval_text(lo[0], hi[0]), agreement(-1, point[0], lo[0], hi[0])))
    return rows


def regenerate_clean(data: Path, split: str, out: Path) -> Path:
    """The images of ``split`` without the cue (their clean twins), written by the generator into ``out`` from the
    cued dataset's own dataset.json (seed, size, classes, images per class)."""
    from kdq.function.data.synthetic import write_dataset

    record = read_json_file(data / "dataset.json") or {}
    per_class = record.get("per_class") or {}
    if split not in per_class or not record.get("classes"):
        raise UserError(f"--data: {data / 'dataset.json'} records no split {split!r} of the embedded dataset")
    write_dataset(out, int(record["seed"]), int(record["image_size"]), len(record["classes"]),
                  {split: int(per_class[split])}, show_progress=False)
    return out


def correct_per_image(run_dir: Path, root: Path, split: str) -> np.ndarray:
    """(N,) 1.0 where the training run's last checkpoint classifies an image of ``root``'s ``split`` right."""
    import torch

    from kdq.function.data.transforms import eval_transform
    from kdq.function.io.checkpoint import list_checkpoints, load_weights
    from kdq.models import build_model

    record = read_run_json(run_dir)
    arch = (record.get("model") or {}).get("arch") or (record.get("settings") or {}).get("arch")
    size = (record.get("model") or {}).get("image_size")
    ds = MaskedImageFolder(root, split, transform=eval_transform(int(size)))
    model = build_model(arch, len(ds.classes))
    last = max(list_checkpoints(run_dir).items())[1]
    load_weights(model, last, arch)
    model.eval()
    with torch.no_grad():
        return np.array([float(model(x[None]).argmax(1).item() == y) for x, y in ds])


def reliance_rows(runs: Path, data: Path, split: str, n_boot: int, seed_: int, scratch: Path) -> list[Row]:
    """The manipulation check: the label net's top-1 on the cued images against their clean twins (the same
    images without the cue); a net that uses the cue loses accuracy without it."""
    run_dir = runs / "label"
    if not (data / CUE_DIR / split).is_dir() or not (run_dir / "run.json").is_file():
        return [missing_row("background shortcut", f"{run_dir} or {data / CUE_DIR / split}")]
    cued = correct_per_image(run_dir, data, split)
    clean = correct_per_image(run_dir, regenerate_clean(data, split, scratch), split)
    point, lo, hi = boot(lambda idx: np.array([cued[idx].mean() - clean[idx].mean()]), len(cued), n_boot, seed_)
    return [Row("background shortcut", f"label net top-1 on the cued {split} images − on their clean twins", "> 0",
                f"{fmt(point[0])} (cued {fmt(cued.mean())}, clean {fmt(clean.mean())}; {len(cued)} images)",
                interval_text(lo[0], hi[0]), agreement(1, point[0], lo[0], hi[0]))]


def same_run_rows(log_path: Path, metrics_path: Path, layer: str) -> list[Row]:
    """The metrics stage given one sigma run as both nets: its refusal, or its six differences and verdicts."""
    experiment, expected = "same run twice", "no verdict, interval around 0"
    try:
        log = Path(log_path).read_text()
    except OSError:
        return [missing_row(experiment, str(log_path))]
    status = re.findall(r"exit status (\d+)", log)
    code = int(status[-1]) if status else None
    if code != 0:
        lines = [ln for ln in log.splitlines() if ln.strip() and not ln.startswith("exit status")]
        why = lines[-1].strip() if lines else "no message"
        return [Row(experiment, "all", expected, f"refused (exit status {code}): {why}", "-",
                    "yes (refused)" if code == 2 else "no")]
    metrics = read_json_file(metrics_path)
    if not isinstance(metrics, dict):
        return [missing_row(experiment, str(metrics_path))]
    rows = layer_metrics(metrics, layer)
    diffs, widths, verdicts = [], [], []
    for key, r in rows.items():
        if r.get("predicted") is None:
            continue
        lo, hi = r.get("difference_ci") or (None, None)
        diffs.append(abs(r["difference"]) if r.get("difference") is not None else np.nan)
        widths.append(max(abs(lo), abs(hi)) if lo is not None and hi is not None else np.nan)
        verdicts.append(verdict_text(r))
    if not diffs:
        return [missing_row(experiment, f"predicted metrics in {metrics_path}")]
    warned = re.search(r"same (sigma )?run", log) is not None
    called = [v for v in verdicts if v in ("supported", "opposite, significant")]
    counts = ", ".join(f"{v} ×{verdicts.count(v)}" for v in dict.fromkeys(verdicts))
    return [Row(experiment, f"{len(diffs)} predicted metrics", expected,
                f"largest abs. difference {fmt(float(np.nanmax(diffs)))}; verdicts: {counts}"
                f"{'; warned' if warned else ''}", f"largest abs. bound {fmt(float(np.nanmax(widths)))}",
                "no" if called or np.nanmax(diffs) > 0 else "yes")]


def area_rows(experiment: str, maps: Maps | None, b: float, n_boot: int, seed_: int, what: str,
              shuffle: bool = False) -> list[Row]:
    """fg share of the concepts − fg share of the cells (expected ≈ 0): the untrained net, or shuffled masks
    (each image's maps with the next image's mask, as bench/sigma_fg_bg.py --shuffle-masks)."""
    if maps is None:
        return [missing_row(experiment, what)]
    fg = np.roll(maps.fg, -1, axis=0) if shuffle else maps.fg
    point, lo, hi = boot(lambda idx: fg_share_excess(maps.H, fg, b, idx), len(maps.names), n_boot, seed_)
    true = f"; true masks {fmt(fg_share_excess(maps.H, maps.fg, b)[0])}" if shuffle else ""
    return [Row(experiment, "fg share of concepts − fg share of cells", EXPECTED_TEXT[0],
                f"{fmt(point[0])} (concepts {fmt(point[1])}, cells {fmt(point[2])}; {len(maps.names)} images{true})",
                interval_text(lo[0], hi[0]), agreement(0, point[0], lo[0], hi[0]))]


def auc_row(shuffled: Path, masks: Path) -> list[Row]:
    """The pooled fg/bg AUC of bench/sigma_fg_bg.py at the last checkpoint, shuffled masks (true masks beside)."""
    def last_auc(path: Path) -> float | None:
        found = read_json_file(path)
        if not isinstance(found, list) or not found or not found[0].get("checkpoints"):
            return None
        ckpts = found[0]["checkpoints"]
        return ckpts[max(ckpts, key=int)].get("auc_pooled")

    auc, true_auc = last_auc(shuffled), last_auc(masks)
    if auc is None:
        return [missing_row("shuffled masks", str(shuffled))]
    return [Row("shuffled masks", "AUC bg H > fg H, pooled (bench/sigma_fg_bg.py)", "≈ 0.5",
                f"{fmt(auc)} (true masks {fmt(true_auc)})", "-",
                "yes" if abs(auc - 0.5) <= AUC_TOLERANCE else "no")]


def accuracy_notes(runs: Path, layer: str) -> list[str]:
    """The final validation top-1 of the runs (the val split is clean: a label net that relies on the cue loses
    accuracy there)."""
    notes = []
    for name, run_dir in (("teacher", runs / "teacher"), ("label net (cued train split)", runs / "label"),
                          ("distil net", runs / "distil" / layer)):
        acc = final_accuracy(read_run_json(run_dir)) if run_dir.is_dir() else None
        notes.append(f"{name}: final val top-1 {'-' if acc is None else f'{acc:.1f} %'} (clean val split)")
    return notes


def paper_rule_keeps(maps: Maps) -> np.ndarray | None:
    """(N,) bool: the images the paper's effective-sample rule (on by default) would keep — the fg/bg gap ≥ 0 at
    every checkpoint from :func:`~kdq.function.sigma.effective.rule_start` on; None when the run records no
    schedule."""
    if maps.sigma is None or not maps.epochs or not maps.total_epochs:
        return None
    start = rule_start(int(maps.total_epochs))
    return np.array([all(keeps_image(entropy_gap(maps.sigma[i, k], maps.fg[i]))
                         for k, e in enumerate(maps.epochs) if e >= start) for i in range(len(maps.names))])


def rule_notes(nets: dict[str, Maps | None]) -> list[str]:
    notes = []
    for net, maps in nets.items():
        kept = None if maps is None else paper_rule_keeps(maps)
        if kept is not None:
            notes.append(f"{net} net: the paper's effective-sample rule (method.md §2) keeps {int(kept.sum())} of "
                         f"these {len(kept)} images")
    return notes


def sigma_notes(runs: Path, layer: str) -> list[str]:
    """How many drawn images each sigma run kept as effective: the effective-sample rule (docs/method.md §2) drops
    an image whose map keeps more background than foreground, which is what a net using the cue may do."""
    notes = []
    for name in ("sigma_label", "sigma_distil", "sigma_untrained"):
        run_dir = runs / name / layer
        if (run_dir / layout.EFFECT_LIST).is_file():
            kept = len(layout.read_names(run_dir / layout.EFFECT_LIST))
            dropped = len(layout.read_names(run_dir / layout.NON_EFFECT_LIST)) \
                if (run_dir / layout.NON_EFFECT_LIST).is_file() else 0
            notes.append(f"{name}/{layer}: {kept} effective, {dropped} non-effective images")
    return notes


def open_maps(run_dir: Path, data: Path, split: str, names: list[str] | None = None) -> Maps | None:
    if not (run_dir / layout.EFFECT_LIST).is_file():
        return None
    names = usable_names(run_dir) if names is None else names
    return load_maps(run_dir, data, split, names) if names else None


def validation_rows(runs: Path, data: Path, layer: str, split: str, n_boot: int,
                    seed_: int) -> tuple[list[Row], list[str]]:
    """Every row of the table, from what ``make validate`` wrote below ``runs``, and notes for under it."""
    metrics_path = runs / f"metrics_{layer}" / "metrics.json"
    metrics = read_json_file(metrics_path)
    b = (metrics.get("settings") or {}).get("b") if isinstance(metrics, dict) else None
    b = float(default_b() if b is None else b)
    label_dir, distil_dir = runs / "sigma_label" / layer, runs / "sigma_distil" / layer
    label = distil = None
    if (label_dir / layout.EFFECT_LIST).is_file() and (distil_dir / layout.EFFECT_LIST).is_file():
        shared = set(usable_names(distil_dir))
        names = [n for n in usable_names(label_dir) if n in shared]
        if names:
            label, distil = (load_maps(d, data, split, names) for d in (label_dir, distil_dir))
    with tempfile.TemporaryDirectory() as scratch:
        rows = reliance_rows(runs, data, split, n_boot, seed_, Path(scratch) / "clean")
    rows += shortcut_metric_rows(metrics_path, layer) + cue_rows(label, distil, b, n_boot, seed_)
    rows += same_run_rows(runs / f"control_same_{layer}.log", runs / f"control_same_{layer}" / "metrics.json", layer)
    rows += area_rows("shuffled masks", open_maps(label_dir, data, split), b, n_boot, seed_, str(label_dir),
                      shuffle=True)
    rows += auc_row(runs / f"fgbg_shuffled_{layer}.json", runs / f"fgbg_masks_{layer}.json")
    untrained = runs / "sigma_untrained" / layer
    untrained_maps = open_maps(untrained, data, split)
    rows += area_rows("untrained net (checkpoint 0)", untrained_maps, b, n_boot, seed_, str(untrained))
    notes = accuracy_notes(runs, layer) + sigma_notes(runs, layer) + rule_notes({"label": label, "distil": distil})
    if untrained_maps is not None and untrained_maps.cue.any():
        cue, other = cue_rates(untrained_maps, b)
        notes.append(f"untrained net (checkpoint 0): concept rate of the cue cells {fmt(cue)}, of the other background "
                     f"cells {fmt(other)} (what the mark's contrast alone gives, before any learning)")
    return rows, notes


def table(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="the folder make validate wrote (VALIDATE_RUNS)")
    p.add_argument("--data", type=Path, required=True, help="the cued dataset root (VALIDATE_DATA)")
    p.add_argument("--layer", default="fc1", help="the layer analysed (VALIDATE_LAYER)")
    p.add_argument("--split", default="train", help="the split the sigma runs drew from")
    p.add_argument("--bootstrap", type=positive_int, default=MetricsConfig.bootstrap,
                   help="bootstrap resamples over images")
    p.add_argument("--seed", type=seed, default=0, help="bootstrap seed")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return p


def main(args: argparse.Namespace) -> None:
    existing_dir("--runs", args.runs)
    existing_dir("--data", args.data)
    rows, notes = validation_rows(args.runs, args.data, args.layer, args.split, args.bootstrap, args.seed)
    print(table(rows))
    print()
    print("\n".join(notes))
    if args.json:
        write_json(args.json, {"rows": [asdict(r) for r in rows], "notes": notes})


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
