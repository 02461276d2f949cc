"""Stage 4: compare the label net and the distil net at one layer (docs/method.md §3) — visual concepts (H1),
learning speed (H2) and stability (H3) — with paired bootstrap intervals, figures and a report.

    python sigma/find_knowledge_new.py --label-sigma runs/sigma_label --distil-sigma runs/sigma_distil \\
        --label-run runs/label --distil-run runs/distil --data data/embedded --split train --layer conv \\
        --out runs/metrics_conv

Writes ``<out>/metrics.json`` (every number, the inputs, settings and versions), ``metrics.csv`` (one row
per image × net), ``report.md`` (the hypotheses table, then the figures) and ``figures/<layer>_*.png``;
prints the hypotheses table.  Reads sigma runs of kdq and of the original code (docs/method.md §4).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kdq.function.cli import (Parser, UserError, bootstrap_count, finite_float, nonnegative_float, positive_int, run,
                             seed)
from kdq.function.data.options import add_foreground_args
from kdq.models import LAYERS

log = logging.getLogger(__name__)
STAGE = "find_knowledge"

LAYOUT_HELP = """\
folders:
  A sigma run is a folder in the docs/method.md §4 layout (full_name_list.txt, effect_name_list.txt,
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
  epochs (runs of the original code); 'paper' is each net's schedule from its training run's
  length (0 2 5 ... 150, and 170 ... 400 for a 400-epoch run), as the original picks it.  The
  two nets may have different schedules (--label-checkpoints / --distil-checkpoints).

  --compat original reproduces the original code's printed figures: for ResNets (epoch 0 left
  out of m-hat) D and the slope are read at the checkpoint before m-hat, each net drops its own
  images with a sigma <= 0 (so the nets may use different images), an image without background
  cells turns the baseline into NaN, and slopes where D(m-hat) = 0 stay inf.  The default
  corrects these.

exit status: 0 ok, 2 bad input (one line on stderr; --debug shows the traceback)."""


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0], epilog=LAYOUT_HELP)
    i = p.add_argument_group("inputs")
    i.add_argument("--label-sigma", metavar="DIR", type=Path, nargs="+", required=True,
                   help="sigma run(s) of the label net (baseline): one per training run of it, each trained with "
                        "another --seed (several: a two-level bootstrap over runs and images, docs/method.md §3)")
    i.add_argument("--distil-sigma", metavar="DIR", type=Path, nargs="+", required=True,
                   help="sigma run(s) of the distil net (student), one per training run, as --label-sigma")
    i.add_argument("--label-run", metavar="RUN", type=Path, nargs="+", default=None,
                   help="training run(s) of the label net (their weight_diff.npy), one per --label-sigma in the same "
                        "order; default: recorded in each sigma run")
    i.add_argument("--distil-run", metavar="RUN", type=Path, nargs="+", default=None,
                   help="training run(s) of the distil net (phase-1 weight_diff.npy), one per --distil-sigma; "
                        "default: recorded in each sigma run")
    i.add_argument("--data", metavar="ROOT", type=Path, required=True, help="dataset root with masks under seg/ (docs/method.md §4)")
    i.add_argument("--split", metavar="SPLIT", default="train", help="the split the sigma runs' image names are relative to")
    i.add_argument("--layer", choices=list(LAYERS) + ["all"], default=None,
                   help="layer analysed; 'all' = one table over the four layers (see folders below); "
                        "default: the layer the sigma run records")
    i.add_argument("--checkpoints", nargs="+", default=None, metavar="E",
                   help="epochs of the sigma files' K entries, oldest first, or 'paper' (each net's schedule from "
                        "its training run); default: recorded in the sigma runs' run.json")
    i.add_argument("--label-checkpoints", nargs="+", default=None, metavar="E",
                   help="the label net's epochs when its schedule differs from the distil net's")
    i.add_argument("--distil-checkpoints", nargs="+", default=None, metavar="E",
                   help="the distil net's epochs when its schedule differs from the label net's")
    i.add_argument("--grid", metavar="G", type=positive_int, default=None,
                   help="expected sigma grid g (checked against the files; default: read from them)")
    i.add_argument("--arch", metavar="ARCH", default=None,
                   help="architecture, for the input size S and the ResNet m̂ rule; default: recorded in the runs")
    i.add_argument("--image-size", metavar="S", type=positive_int, default=None,
                   help="input side S the masks are resized to before the grid; default: the arch's (224 if unknown)")
    add_foreground_args(i, recorded=True)
    m = p.add_argument_group("metrics (docs/method.md §3)")
    m.add_argument("--b", type=nonnegative_float, default=0.2, help="concept threshold: H̄_bg(k) − H_i(k) > b")
    m.add_argument("--mhat-skip-epoch0", choices=["auto", "yes", "no"], default="auto",
                   help="leave epoch 0 out of m̂ = argmax_k N_fg; auto = yes for ResNets, as the original code "
                        "(whose off-by-one reading of D there kdq corrects: --compat original keeps it)")
    m.add_argument("--compat", choices=["kdq", "original"], default="kdq",
                   help="original: reproduce the original code's arithmetic where it differs (see folders below)")
    m.add_argument("--bootstrap", metavar="N", type=bootstrap_count, default=1000,
                   help="bootstrap resamples over images")
    m.add_argument("--level", metavar="P", type=finite_float, default=0.95, help="interval level")
    m.add_argument("--seed", metavar="SEED", type=seed, default=0, help="bootstrap seed")
    f = p.add_argument_group("output")
    f.add_argument("--out", metavar="DIR", type=Path, required=True, help="folder for metrics.json, metrics.csv, report.md, figures/")
    f.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    f.add_argument("--no-figures", action="store_true", help="skip the figures (numbers and report only)")
    f.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar over the bootstrap (it is plain lines anyway when stderr is not a terminal)")
    f.add_argument("--show-images", metavar="N", type=positive_int, default=3, help="images in the entropy-map figure")
    f.add_argument("--max-columns", metavar="N", type=positive_int, default=8, help="checkpoints shown in the entropy-map figure")
    return p


def make_request(args: argparse.Namespace):
    """The flags that shape each layer's inputs, as a :class:`~kdq.function.metrics.inputs.Request`."""
    from kdq.function.metrics.inputs import Request

    checkpoints = {}
    for net in ("label", "distil"):
        own = getattr(args, f"{net}_checkpoints")
        if own is not None and args.checkpoints is not None:
            raise UserError(f"--checkpoints and --{net}-checkpoints exclude each other")
        checkpoints[net] = (own, f"--{net}-checkpoints") if own is not None else (args.checkpoints, "--checkpoints")
    runs = {net: tuple(getattr(args, f"{net}_run")) if getattr(args, f"{net}_run") else None for net in ("label", "distil")}
    return Request(label_run=runs["label"], distil_run=runs["distil"], checkpoints=checkpoints, grid=args.grid,
                   arch=args.arch, image_size=args.image_size, foreground=args.foreground,
                   missing_mask=args.missing_mask, exact_masks=args.exact_masks, mask_pad=args.mask_pad,
                   mhat_skip_epoch0=args.mhat_skip_epoch0, compat=args.compat)


def main(args: argparse.Namespace) -> None:
    from kdq.function.checks import LEVEL, check_in
    from kdq.function.data.folder import MaskedImageFolder
    from kdq.function.io.atomic import atomic_dir, write_bytes
    from kdq.function.io.rundir import RunRecord, check_out, check_out_apart
    from kdq.function.metrics.analysis import analyse_layer, render_figures, shown_images
    from kdq.function.metrics.inputs import NETS, SigmaRun, layer_dirs, load_layer
    from kdq.function.metrics.report import terminal_table, write_outputs

    check_in("--level", args.level, LEVEL)  # the rule kdq.compare applies to level
    check_out_apart(args.out, args)
    check_out(args.out, STAGE, overwrite=args.overwrite, resumable=False)
    layer = args.layer
    if layer is None:
        layer = SigmaRun.open(args.label_sigma[0], "--label-sigma").recorded("layer")
        if layer not in LAYERS:
            raise UserError("--layer is needed: the label sigma run does not record its layer")
    record = RunRecord(args.out, STAGE, args, resolved={"layer": layer}, carry_wall_time=False)
    data = MaskedImageFolder(args.data, args.split)
    request = make_request(args)
    inputs = [load_layer(request, name, data, a, b)  # every check before any output
              for name, a, b in layer_dirs(layer, args.label_sigma, args.distil_sigma)]
    check_out_apart(args.out, args, recorded={f"the {net} net's training run {d.run} (recorded in its sigma run)": d.run
                                              for inp in inputs for net in NETS for d in inp.runs[net]})
    if layer == "all":
        missing = [name for name in LAYERS if name not in {i.layer for i in inputs}]
        if missing:
            log.warning("--layer all: no sigma runs for %s; the table covers %s", ", ".join(missing),
                        ", ".join(i.layer for i in inputs))
            inputs[0].notes.append(f"--layer all: no sigma runs for {', '.join(missing)}")
    results = [analyse_layer(inp, data, args.b, args.bootstrap, args.seed, args.level, args.progress) for inp in inputs]
    figures = {}
    for res in ([] if args.no_figures else results):
        images = shown_images(res, data, args.show_images)
        for key, png in render_figures(res, images, args.max_columns).items():
            rel = f"figures/{res.layer}_{key}.png"
            res.figures[key] = rel
            figures[rel] = png

    # the report folder appears whole or not at all: written in a temporary sibling, then swapped in
    # (check_out made sure that a folder already there is a report of this stage and --overwrite was given)
    with atomic_dir(args.out) as tmp:
        for rel, png in figures.items():
            write_bytes(tmp / rel, png)
        provenance = {key: record.data[key] for key in ("stage", "command", "versions", "git_commit")}
        write_outputs(tmp, results, record.data["settings"], provenance, args.level)
        record.save("complete", folder=tmp)
    print(terminal_table(results, args.level))
    print(f"\nwrote {args.out / 'report.md'}, metrics.json, metrics.csv and {len(figures)} figures")


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
