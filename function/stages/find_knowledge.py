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

import logging

from kdq.function.cli import UserError, run
from kdq.function.config import build_parser
from kdq.function.metrics.config import MetricsConfig
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


def get_args_parser():
    """The stage's flags: one per field of :class:`~kdq.function.metrics.config.MetricsConfig` (parse_args returns
    it)."""
    return build_parser(MetricsConfig, __doc__.split("\n\n")[0], epilog=LAYOUT_HELP)


def main(args: MetricsConfig) -> None:
    from kdq.function.checks import LEVEL, check_in
    from kdq.function.data.folder import MaskedImageFolder
    from kdq.function.io.atomic import atomic_dir, write_bytes
    from kdq.function.io.rundir import RunRecord, check_out, check_out_apart
    from kdq.function.metrics.analysis import analyse_layer, render_figures, shown_images
    from kdq.function.metrics.inputs import NETS, SigmaRun, layer_dirs, load_layer
    from kdq.function.metrics.report import terminal_table, write_outputs
    from kdq.function.runtime import use_threads

    args = use_threads(args)  # torch's CPU threads (--threads), the count recorded in run.json
    check_in("--level", args.level, LEVEL)  # the rule kdq.compare applies to level
    check_out_apart(args.out, args)
    check_out(args.out, STAGE, overwrite=args.overwrite, resumable=False)
    layer = args.layer
    if layer is None:
        layer = SigmaRun.open(args.label_sigma[0], "--label-sigma").recorded("layer")
        if layer not in LAYERS:
            raise UserError("--layer is needed: the label sigma run does not record its layer")
    data = _dataset(args)
    record = RunRecord(args.out, STAGE, args, resolved={"layer": layer, "modality": getattr(data, "modality", "image")},
                       carry_wall_time=False)
    inputs = [load_layer(args, name, data, a, b)  # every check before any output
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
        images = shown_images(res, data, args.show_images) if isinstance(data, MaskedImageFolder) else None
        pngs = render_figures(res, images, args.max_columns)
        if not isinstance(data, MaskedImageFolder):
            from kdq.function.metrics.analysis import unit_figures

            pngs.update(unit_figures(res, data, args.show_images, args.max_columns))
        for key, png in pngs.items():
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


def _dataset(args):
    """The split the sigma runs were fitted on: images (the folder layout), or tokens and points (their layouts)."""
    from kdq.function.data.folder import MaskedImageFolder
    from kdq.function.data.modality import data_modality
    from kdq.function.sigma.unit_run import UnitSource

    modality = data_modality(args.modality, args.data)
    if modality == "image":
        return MaskedImageFolder(args.data, args.split)
    return UnitSource(modality, args.data, args.split)


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
