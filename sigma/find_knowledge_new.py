"""Stage 4: compare the label net and the distil net at one layer (SPEC §3) — visual concepts (H1),
learning speed (H2) and stability (H3) — with paired bootstrap intervals, figures and a report.

    python sigma/find_knowledge_new.py --label-sigma runs/sigma_label --distil-sigma runs/sigma_distil \\
        --label-run runs/label --distil-run runs/distil --data data/embedded --split train --layer conv \\
        --out runs/metrics_conv

Writes ``<out>/metrics.json`` (every number, the inputs, settings and versions), ``metrics.csv`` (one row
per image × net), ``report.md`` (the hypotheses table, then the figures) and ``figures/<layer>_*.png``;
prints the hypotheses table.  Reads sigma runs of kdq and of the original code (SPEC §4).
"""
from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image

from function import plots
from function.atomic import atomic_dir, write_bytes, write_json
from function.cli import Parser, UserError, finite_float, positive_int, run
from function.datasets import MaskedImageFolder
from function.masks import central_square
from function.metrics import METRICS, NetInput, compare, entropy_map
from function.report import LABELS, LayerResult, terminal_table, write_outputs
from function.rundir import check_out_apart, git_commit, read_run_json, recorded_path
from function.schedule import paper_schedule
from function.sigma_inputs import (LAYERS, PairedSigma, SigmaRun, check_recorded_grid, foreground_cells, load_pair,
                                   load_weight_diff, resolve_epochs)

log = logging.getLogger("kdq")
STAGE = "find_knowledge"

LAYOUT_HELP = """\
folders:
  A sigma run is a folder in the SPEC §4 layout (full_name_list.txt, effect_name_list.txt,
  img_<i>_effect/npy_files/best_sigma_entropy.npy ...), written by sigma/train_sigma.py or the
  original code.  A training run is a folder holding weight_diff.npy (4, epochs+1).

  For every folder flag, if <dir>/<layer> is the kind of folder expected (a sigma run, or a
  training run with weight_diff.npy) it is used, otherwise <dir> itself.  So with --layer all the
  four layers are read from per-layer subfolders:
      <label-sigma>/{conv,fc1,fc2,fc3}   <distil-sigma>/{conv,fc1,fc2,fc3}
      <distil-run>/{conv,...} (one feature-distilled net per layer) or <distil-run> for all layers
      <label-run> (one label net serves every layer; its weight_diff.npy row picks the layer)
  Layers whose two sigma subfolders do not both exist are skipped with a warning.

  --label-run/--distil-run default to the training run a kdq sigma run records (checkpoint_root
  in its run.json).  --checkpoints is needed only when the sigma runs do not record their
  epochs (runs of the original code); 'paper' means SPEC's schedule scaled to the training run.

exit status: 0 ok, 2 bad input (one line on stderr; --debug shows the traceback)."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0], epilog=LAYOUT_HELP, formatter_class=_Formatter)
    i = p.add_argument_group("inputs")
    i.add_argument("--label-sigma", metavar="DIR", type=Path, required=True, help="sigma run of the label net (baseline)")
    i.add_argument("--distil-sigma", metavar="DIR", type=Path, required=True, help="sigma run of the distil net (student)")
    i.add_argument("--label-run", metavar="RUN", type=Path, default=None,
                   help="training run of the label net (its weight_diff.npy); default: recorded in the sigma run")
    i.add_argument("--distil-run", metavar="RUN", type=Path, default=None,
                   help="training run of the distil net (phase-1 weight_diff.npy); default: recorded in the sigma run")
    i.add_argument("--data", metavar="ROOT", type=Path, required=True, help="dataset root with masks under seg/ (SPEC §4)")
    i.add_argument("--split", metavar="SPLIT", default="train", help="the split the sigma runs' image names are relative to")
    i.add_argument("--layer", choices=list(LAYERS) + ["all"], default=None,
                   help="layer analysed; 'all' = one table over the four layers (see folders below); "
                        "default: the layer the sigma run records")
    i.add_argument("--checkpoints", nargs="+", default=None, metavar="E",
                   help="epochs of the sigma files' K entries, oldest first, or 'paper'; "
                        "default: recorded in the sigma runs' run.json")
    i.add_argument("--grid", metavar="G", type=positive_int, default=None,
                   help="expected sigma grid g (checked against the files; default: read from them)")
    i.add_argument("--arch", metavar="ARCH", default=None,
                   help="architecture, for the input size S and the ResNet m̂ rule; default: recorded in the runs")
    i.add_argument("--image-size", metavar="S", type=positive_int, default=None,
                   help="input side S the masks are resized to before the grid; default: the arch's (224 if unknown)")
    i.add_argument("--foreground", choices=["auto", "masks", "central"], default="auto",
                   help="foreground cells: the dataset's masks, or the central square [g/6, 5g/6] for every image; "
                        "auto = what the sigma run records (its --foreground), else masks")
    i.add_argument("--missing-mask", choices=["error", "central"], default="error",
                   help="an image without a mask: refuse (error) or use the central square [g/6, 5g/6] (ILSVRC)")
    m = p.add_argument_group("metrics (SPEC §3)")
    m.add_argument("--b", type=finite_float, default=0.2, help="concept threshold: H̄_bg(k) − H_i(k) > b")
    m.add_argument("--mhat-skip-epoch0", choices=["auto", "yes", "no"], default="auto",
                   help="leave epoch 0 out of m̂ = argmax_k N_fg; auto = yes for ResNets (original code)")
    m.add_argument("--bootstrap", metavar="N", type=positive_int, default=1000, help="bootstrap resamples over images")
    m.add_argument("--level", metavar="P", type=finite_float, default=0.95, help="interval level")
    m.add_argument("--seed", metavar="SEED", type=int, default=0, help="bootstrap seed")
    f = p.add_argument_group("output")
    f.add_argument("--out", metavar="DIR", type=Path, required=True, help="folder for metrics.json, metrics.csv, report.md, figures/")
    f.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    f.add_argument("--no-figures", action="store_true", help="skip the figures (numbers and report only)")
    f.add_argument("--show-images", metavar="N", type=positive_int, default=3, help="images in the entropy-map figure")
    f.add_argument("--max-columns", metavar="N", type=positive_int, default=8, help="checkpoints shown in the entropy-map figure")
    return p


# ---- output folder --------------------------------------------------------------------------------

def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that holds files unless --overwrite and it is a report of this stage."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    if not (out.is_dir() and any(out.iterdir())):
        return
    ours = (out / "metrics.json").is_file() or read_run_json(out).get("stage") == STAGE
    if not overwrite:
        what = "a report" if ours else "files"
        raise UserError(f"--out: {out} already holds {what}; pass --overwrite to replace it")
    if not ours:
        raise UserError(f"--out: {out} is not empty and holds no report of this stage; refusing to delete it "
                        "with --overwrite (remove it yourself)")


# ---- inputs of one layer --------------------------------------------------------------------------

def _pick(folder: Path, layer: str, marker: str) -> Path:
    sub = Path(folder) / layer
    return sub if (sub / marker).is_file() else Path(folder)


def _training_run(flag: str, given: Path | None, sigma: SigmaRun, layer: str) -> Path:
    root = sigma.recorded("checkpoint_root")
    if root is not None:
        root = recorded_path(root, sigma.meta.get("cwd"))
    if given is not None:
        run = _pick(given, layer, "weight_diff.npy")
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


def _cli_epochs(args, label_run: Path, distil_run: Path) -> list[int] | None:
    if args.checkpoints is None:
        return None
    if args.checkpoints == ["paper"]:
        a = paper_schedule(_run_epochs(label_run, "--label-run"))
        b = paper_schedule(_run_epochs(distil_run, "--distil-run"))
        if a != b:
            raise UserError(f"--checkpoints paper: the training runs differ in length, so their schedules differ "
                            f"(label {a} vs distil {b}); give the epochs explicitly")
        return a
    try:
        epochs = [int(e) for e in args.checkpoints]
    except ValueError:
        raise UserError(f"--checkpoints takes epochs (integers) or 'paper', got {' '.join(args.checkpoints)}") from None
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
    epochs, source = resolve_epochs(lab, dis, _cli_epochs(args, label_run, distil_run))
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
        from models import ARCHS  # imported only when needed: building the registry takes seconds
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


def analyse_layer(args, inp: LayerInputs, data: MaskedImageFolder) -> LayerResult:
    """SPEC §3 with the bootstrap for one layer (logs the layer's warnings first)."""
    for message in inp.warnings:
        log.warning("%s: %s", inp.layer, message)
    pair, epochs, wd = inp.pair, inp.epochs, inp.wd
    D_at = {net: np.cumsum(wd[net])[epochs] for net in wd}
    H = {"label": entropy_map(pair.label), "distil": entropy_map(pair.distil)}
    log.info("%s: %d images, %d checkpoints, grid %d; bootstrap %d resamples", inp.layer, len(pair.names),
             len(epochs), pair.label.shape[-1], args.bootstrap)
    comp = compare(NetInput(H["label"], D_at["label"], inp.allowed),
                   NetInput(H["distil"], D_at["distil"], inp.allowed), inp.fg, args.b, args.bootstrap, args.seed,
                   args.level)
    result = LayerResult(
        layer=inp.layer, names=pair.names, epochs=epochs, epochs_source=inp.epochs_source,
        grid=pair.label.shape[-1], image_size=inp.size,
        inputs={"--label-sigma": str(inp.lab.path), "--distil-sigma": str(inp.dis.path),
                "--label-run": str(inp.label_run), "--distil-run": str(inp.distil_run), "--data": str(data.root),
                "--split": data.split, "--foreground": inp.foreground},
        counts={"label_effective": len(inp.lab.effect), "distil_effective": len(inp.dis.effect), "both": pair.both,
                "used": len(pair.names), "skipped": len(pair.skipped)},
        skipped=pair.skipped, mask_fallback=inp.fallback, mhat_skips_epoch0=inp.skip0, comparison=comp,
        notes=inp.notes)
    result.figure_data = {"H": H, "wd": wd, "central": inp.foreground == "central"}
    return result


# ---- figures --------------------------------------------------------------------------------------

def _display_image(data: MaskedImageFolder, name: str, size: int, grid: int,
                   central: bool) -> tuple[str, np.ndarray, np.ndarray]:
    """The image at S×S with the foreground the metrics used (mask, or the central square upsampled)."""
    i = data.index_of(name)
    rgb = np.asarray(data.load_image(i).resize((size, size), Image.BILINEAR))
    mask = None if central else data.mask(i)
    if mask is None:
        idx = (np.arange(size) * grid) // size
        mask = central_square(grid)[np.ix_(idx, idx)]
    else:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
    return name, rgb, mask


def render_figures(res: LayerResult, data: MaskedImageFolder, args) -> dict[str, bytes]:
    fd = res.figure_data
    c = res.comparison
    n = min(args.show_images, len(res.names))
    images = [_display_image(data, name, res.image_size, res.grid, fd["central"]) for name in res.names[:n]]
    tag = f"layer {res.layer}, {len(res.names)} images"
    figs = {
        "entropy_maps": plots.entropy_maps(images, fd["H"]["label"][:n], fd["H"]["distil"][:n], res.epochs,
                                           f"Entropy maps at {res.layer} (first {n} of {len(res.names)} images)",
                                           args.max_columns),
        "concept_curves": plots.concept_curves(res.epochs, c.curves, c.level, f"Visual concepts per image ({tag})"),
        "weight_distance": plots.weight_distance(
            {net: np.cumsum(fd["wd"][net]) for net in fd["wd"]},
            {net: np.asarray(res.epochs)[getattr(c, net).mhat] for net in ("label", "distil")},
            {net: c.summary[net]["D_mean"] for net in ("label", "distil")},
            f"Cumulative weight distance and m̂ ({tag})"),
        "metric_panels": plots.metric_panels([r for r in c.rows if r["metric"] in {m.key for m in METRICS}],
                                             LABELS, c.level, f"The six metrics, label vs distil ({tag})"),
    }
    return figs


# ---- main -----------------------------------------------------------------------------------------

def _layer_dirs(args) -> list[tuple[str, Path, Path]]:
    if args.layer != "all":
        return [(args.layer, _pick(args.label_sigma, args.layer, "full_name_list.txt"),
                 _pick(args.distil_sigma, args.layer, "full_name_list.txt"))]
    found = []
    for layer in LAYERS:
        a, b = args.label_sigma / layer, args.distil_sigma / layer
        if (a / "full_name_list.txt").is_file() and (b / "full_name_list.txt").is_file():
            found.append((layer, a, b))
    if not found:
        raise UserError(f"--layer all: no layer has sigma runs in both {args.label_sigma}/<layer> and "
                        f"{args.distil_sigma}/<layer> (layers: {', '.join(LAYERS)})")
    return found


def main(args: argparse.Namespace) -> list[LayerResult]:
    started = time.time()
    if not 0 < args.level < 1:
        raise UserError(f"--level must be in (0, 1), got {args.level}")
    check_out_apart(args.out, args)
    check_out(args.out, args.overwrite)
    if args.layer is None:
        args.layer = SigmaRun.open(args.label_sigma, "--label-sigma").recorded("layer")
        if args.layer not in LAYERS:
            raise UserError("--layer is needed: the label sigma run does not record its layer")
    dirs = _layer_dirs(args)
    data = MaskedImageFolder(args.data, args.split)
    inputs = [load_layer(args, layer, data, a, b) for layer, a, b in dirs]  # every check before any output
    if args.layer == "all":
        missing = [l for l in LAYERS if l not in {i.layer for i in inputs}]
        if missing:
            log.warning("--layer all: no sigma runs for %s; the table covers %s", ", ".join(missing),
                        ", ".join(i.layer for i in inputs))
            inputs[0].notes.append(f"--layer all: no sigma runs for {', '.join(missing)}")
    results = [analyse_layer(args, inp, data) for inp in inputs]
    figures = {}
    for res in ([] if args.no_figures else results):
        for key, png in render_figures(res, data, args).items():
            rel = f"figures/{res.layer}_{key}.png"
            res.figures[key] = rel
            figures[rel] = png

    # the report folder appears whole or not at all: written in a temporary sibling, then swapped in
    # (check_out made sure that a folder already there is a report of this stage and --overwrite was given)
    with atomic_dir(args.out) as tmp:
        for rel, png in figures.items():
            write_bytes(tmp / rel, png)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        provenance = {"stage": STAGE, "command": [Path(sys.argv[0]).name] + sys.argv[1:],
                      "versions": {"python": platform.python_version(), "numpy": np.__version__,
                                   "torch": torch.__version__, "matplotlib": matplotlib.__version__},
                      "git_commit": git_commit()}
        write_outputs(tmp, results, settings, provenance, args.level)
        write_json(tmp / "run.json", {**provenance, "status": "complete", "settings": settings,
                                      "wall_time_s": round(time.time() - started, 3)})
    print(terminal_table(results, args.level))
    print(f"\nwrote {args.out / 'report.md'}, metrics.json, metrics.csv and {len(figures)} figures")
    return results


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
