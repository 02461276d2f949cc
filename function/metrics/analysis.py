"""One layer's analysis: the inputs read by :mod:`kdq.function.metrics.inputs` in, the comparison of docs/method.md §3
with its bootstrap (:mod:`kdq.function.metrics.measures`) and the figures (:mod:`kdq.function.metrics.plots`) out.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.masks import central_square
from kdq.function.metrics import plots
from kdq.function.metrics.inputs import NETS, LayerInputs
from kdq.function.metrics.caveats import final_accuracy, not_paper_settings, tap_warnings, training_warnings
from kdq.function.metrics.measures import METRICS, MIN_IMAGES, NetInput, compare_nets, compare_runs
from kdq.function.metrics.report import LABELS, LayerResult, layer_tag, plural
from kdq.function.progress import progress
from kdq.function.sigma.entropy import entropy_map
from kdq.function.sigma.grid import upsample
from kdq.function.train.weight_distance import cumulative_distance, distance_at

log = logging.getLogger(__name__)


def net_input(inp: LayerInputs, net: str, run: int = 0) -> NetInput:
    """What :func:`~kdq.function.metrics.measures.compare_runs` measures of one training run of a net."""
    d = inp.runs[net][run]
    return NetInput(H=entropy_map(d.maps), fg=d.fg, D_at=distance_at(d.wd_row, d.epochs), allowed=d.allowed,
                    original=inp.compat == "original", valid=d.valid)


def _inputs_record(inp: LayerInputs) -> dict[str, str]:
    """flag → path(s) of what the layer read (several runs: the paths joined by spaces, in order)."""
    def joined(paths):
        return " ".join(str(p) for p in paths)

    return {"--label-sigma": joined(d.sigma.path for d in inp.runs["label"]),
            "--distil-sigma": joined(d.sigma.path for d in inp.runs["distil"]),
            "--label-run": joined(d.run for d in inp.runs["label"]),
            "--distil-run": joined(d.run for d in inp.runs["distil"]), "--data": inp.data_root, "--split": inp.split}


def not_paper(inp: LayerInputs) -> list[str]:
    """The settings of the layer's sigma and training runs that are not the paper's (:mod:`.caveats`)."""
    from kdq.function.data.layout import dataset_kind

    return not_paper_settings({net: [d.sigma.meta for d in inp.runs[net]] for net in NETS},
                              {net: [d.record for d in inp.runs[net]] for net in NETS},
                              dataset_kind(Path(inp.data_root)), {net: len(inp.runs[net]) for net in NETS})


def analyse_layer(inp: LayerInputs, data: MaskedImageFolder, b: float, n_boot: int, seed: int,
                  level: float, show_progress: bool = False) -> LayerResult:
    """docs/method.md §3 with the bootstrap for one layer (logs the layer's warnings first)."""
    for message in inp.warnings:
        log.warning("%s: %s", inp.layer, message)
    nets, runs = inp.nets, inp.runs
    units = nets["label"].valid is not None
    log.info("%s: %s %s, %s checkpoints, %s training run(s), %s; bootstrap %d resamples", inp.layer,
             "/".join(str(len(nets[n].names)) for n in NETS), "inputs" if units else "images",
             "/".join(str(len(nets[n].epochs)) for n in NETS), "/".join(str(len(runs[n])) for n in NETS),
             f"up to {inp.grid} units" if units else f"grid {inp.grid}", n_boot)
    inputs = {net: [net_input(inp, net, r) for r in range(len(runs[net]))] for net in NETS}
    loop = partial(progress, desc=f"{inp.layer}: bootstrap", enabled=show_progress)
    several = any(len(runs[n]) > 1 for n in NETS)
    if inp.paired or several:  # several runs whose images differ: the nested two-level bootstrap
        comp = compare_runs(inputs["label"], inputs["distil"], b, n_boot, seed, level, loop=loop, paired=inp.paired)
    else:  # the original's per-net image sets (--compat original)
        comp = compare_nets(inputs["label"][0], inputs["distil"][0], b, n_boot, seed, level, paired=False, loop=loop)
    degenerate = degenerate_warnings(inp, comp)
    caveats = not_paper(inp)
    for message in degenerate:
        log.warning("%s: %s", inp.layer, message)
    if caveats:
        log.warning("%s: %d of the runs' settings are not the paper's (listed in report.md, \"Settings that are "
                    "not the paper's\")", inp.layer, len(caveats))
    result = LayerResult(
        layer=inp.layer, names={n: nets[n].names for n in NETS}, epochs={n: nets[n].epochs for n in NETS},
        epochs_source={n: nets[n].epochs_source for n in NETS}, grid=inp.grid, image_size=inp.size,
        inputs=_inputs_record(inp),
        counts={"label_effective": len(set(nets["label"].sigma.effect)),
                "distil_effective": len(set(nets["distil"].sigma.effect)),
                "both": inp.both, "used_label": len(nets["label"].names), "used_distil": len(nets["distil"].names),
                "skipped": len(inp.skipped),
                "effective_per_run": {n: [len(set(d.sigma.effect)) for d in runs[n]] for n in NETS}},
        skipped=inp.skipped, mask_fallback=inp.fallback, mhat_skips_epoch0=inp.skip0, compat=inp.compat,
        foreground=inp.foreground.describe(), comparison=comp, notes=inp.notes + comp.notes,
        accuracy={net: final_accuracy(nets[net].record) for net in NETS}, warnings=degenerate,
        not_paper=caveats, run_names={n: [d.names for d in runs[n]] for n in NETS},
        runs={n: [{"sigma": str(d.sigma.path), "run": str(d.run), "images": len(d.names),
                   "seed": (d.record.get("settings") or {}).get("seed"), "accuracy": final_accuracy(d.record)}
                  for d in runs[n]] for n in NETS})
    result.figure_data = {"H": {n: inputs[n][0].H for n in NETS}, "wd": {n: nets[n].wd_row for n in NETS},
                          "central": inp.foreground.source == "central"}
    return result


def degenerate_warnings(inp: LayerInputs, comp) -> list[str]:
    """What makes a comparison say little: the comparison's own warnings (:func:`comparison_warnings`), the same
    sigma run for both nets, label and distil given the wrong way round (the training run each sigma run records
    says which it is), and how the nets trained (:func:`~.caveats.training_warnings`)."""
    out = []
    label_paths = {d.sigma.path.resolve(): d.sigma.path for d in inp.runs["label"]}
    for d in inp.runs["distil"]:
        if d.sigma.path.resolve() in label_paths:
            out.append(f"--label-sigma and --distil-sigma name the same sigma run ({d.sigma.path}): the comparison "
                       "is empty")
    for lab, dis in zip(inp.runs["label"], inp.runs["distil"]):
        stages = {"label": lab.record.get("stage"), "distil": dis.record.get("stage")}
        if stages["label"] == "distillation" and stages["distil"] == "train_net":
            out.append("label and distil look swapped: the label sigma run was fitted on a distillation run, the "
                       "distil one on a train_net run")
        elif stages["label"] == "distillation":
            out.append("the label sigma run was fitted on a distillation run, not on a net trained on labels")
        elif stages["distil"] == "train_net":
            out.append("the distil sigma run was fitted on a train_net run, not on a distilled net")
    out += training_warnings({d.run: d.record for d in inp.runs["label"]}, {d.run: d.record for d in inp.runs["distil"]})
    out += tap_warnings(inp.layer, {d.sigma.path: d.sigma.meta for d in inp.runs["label"]},
                        {d.sigma.path: d.sigma.meta for d in inp.runs["distil"]})
    return list(dict.fromkeys(out + comparison_warnings(comp)))


def comparison_warnings(comp) -> list[str]:
    """The warnings a comparison itself gives (also for in-memory maps): fewer than ``MIN_IMAGES`` images (then
    there is no verdict at all), a net without any visual concept, or without a foreground concept at the last
    checkpoint (each run named when a net has several)."""
    out = []
    n = min(len(per.n_fg) for net in NETS for per in comp.runs[net])
    if n < MIN_IMAGES:
        out.append(f"only {plural(n, 'image')} enter the comparison (fewer than {MIN_IMAGES}): no verdict is given")
    for net in NETS:
        runs = comp.runs[net]
        for r, per in enumerate(runs):
            which = f"the {net} net" + (f" (run {r + 1} of {len(runs)})" if len(runs) > 1 else "")
            if not (per.n_fg.any() or per.n_bg.any()):
                out.append(f"{which} has no visual concept at any checkpoint (b too high, or maps without contrast)")
            elif not per.n_fg[:, -1].any():
                out.append(f"{which} has no foreground concept at the last checkpoint: N_fg, λ and ρ compare nothing "
                           "on the object")
    return out


# ---- figures --------------------------------------------------------------------------------------

def _display_image(data: MaskedImageFolder, name: str, size: int, grid: int,
                   central: bool) -> tuple[str, np.ndarray, np.ndarray]:
    """The image at S×S with the foreground the metrics used (mask, or the central square upsampled)."""
    i = data.index_of(name)
    rgb = np.asarray(data.load_image(i).resize((size, size), Image.BILINEAR))
    mask = None if central else data.mask(i)
    if mask is None:
        mask = upsample(central_square(grid), size)
    else:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
    return name, rgb, mask


def shown_images(res: LayerResult, data: MaskedImageFolder, show_images: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The first ``show_images`` images both nets were measured on, at S×S, with the foreground they used."""
    distil = set(res.names["distil"])
    shown = [name for name in res.names["label"] if name in distil][:show_images]
    return [_display_image(data, name, res.image_size, res.grid, res.figure_data["central"]) for name in shown]


def render_figures(res: LayerResult, images: list[tuple[str, np.ndarray, np.ndarray]] | None,
                   max_columns: int) -> dict[str, bytes]:
    """The PNG bytes of the layer's figures, by figure key (the entropy maps only with ``images``: (name, RGB,
    mask) of images both nets were measured on)."""
    fd = res.figure_data
    c = res.comparison
    counts = "/".join(str(len(res.names[n])) for n in NETS) if res.names["label"] != res.names["distil"] \
        else str(len(res.names["label"]))
    tag = f"{layer_tag(res, 'layer {}, ')}{plural(counts, 'image')}"
    figs = {}
    if images:
        rows = {net: [res.names[net].index(name) for name, _, _ in images] for net in NETS}
        H = {net: fd["H"][net][rows[net]] for net in NETS}
        concepts = {net: getattr(c, net).concepts[rows[net]] if getattr(c, net).concepts is not None else None
                    for net in NETS}
        figs["entropy_maps"] = plots.entropy_maps(images, H["label"], H["distil"], res.epochs,
                                                  f"Entropy maps{layer_tag(res, ' at {}')} (first {len(images)} of "
                                                  f"{plural(counts, 'image')})", max_columns, concepts)
    figs.update({
        "concept_curves": plots.concept_curves(res.epochs, c.curves, c.level, f"Visual concepts per image ({tag})"),
        "weight_distance": plots.weight_distance(
            {net: distance_curve(fd, net, res.epochs[net]) for net in NETS},
            {net: np.asarray(res.epochs[net])[getattr(c, net).mhat] for net in NETS},
            {net: c.summary[net]["D_mean"] for net in NETS},
            f"Cumulative weight distance and m̂ ({tag})"),
        "metric_panels": plots.metric_panels([r for r in c.rows if r["metric"] in {m.key for m in METRICS}],
                                             LABELS, c.level, f"The six metrics, label vs distil ({tag})"),
    })
    return figs


def distance_curve(figure_data: dict, net: str, epochs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, D): every epoch of the net's training run, or only its checkpoints when that is all there is."""
    if figure_data.get("wd") is not None:
        D = cumulative_distance(figure_data["wd"][net])
        return np.arange(len(D)), D
    return np.asarray(epochs), np.asarray(figure_data["D"][net])




def unit_figures(res: LayerResult, data, show_images: int, max_columns: int) -> dict[str, bytes]:
    """The entropy figure of tokens (coloured by entropy, per net and checkpoint) or points (coloured by entropy,
    two views), for the first ``show_images`` inputs both nets were measured on (:mod:`.unit_plots`)."""
    from kdq.function.metrics import unit_plots

    distil = set(res.names["distil"])
    shown = [name for name in res.names["label"] if name in distil][:show_images]
    if not shown:
        return {}
    rows = {net: [res.names[net].index(name) for name in shown] for net in NETS}
    H = {net: res.figure_data["H"][net][rows[net]][:, :, 0, :] for net in NETS}  # (N, K, U), NaN past an input
    index = [data.index_of(name) for name in shown]
    flags = [data.foreground(i) for i in index]
    if data.modality == "text":
        png = unit_plots.token_entropy_figure([data.tokens(i) for i in index], H, flags, res.epochs, shown,
                                              max_columns)
    else:
        png = unit_plots.point_entropy_figure(np.stack([data.points(i) for i in index]), H, np.stack(flags),
                                              res.epochs, shown)
    return {"entropy_maps": png}
