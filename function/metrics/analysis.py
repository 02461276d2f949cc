"""One layer's analysis: the inputs read by :mod:`kdq.function.metrics.inputs` in, the comparison of SPEC §3
with its bootstrap (:mod:`kdq.function.metrics.measures`) and the figures (:mod:`kdq.function.metrics.plots`) out.
"""
from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.masks import central_square
from kdq.function.metrics import plots
from kdq.function.metrics.inputs import NETS, LayerInputs
from kdq.function.metrics.measures import METRICS, NetInput, compare
from kdq.function.metrics.report import LABELS, LayerResult
from kdq.function.sigma.entropy import entropy_map
from kdq.function.sigma.grid import upsample
from kdq.function.train.weight_distance import cumulative_distance, distance_at

log = logging.getLogger(__name__)


def net_input(inp: LayerInputs, net: str) -> NetInput:
    """What :func:`~kdq.function.metrics.measures.compare` measures of one net."""
    d = inp.nets[net]
    return NetInput(H=entropy_map(d.maps), fg=d.fg, D_at=distance_at(d.wd_row, d.epochs), allowed=d.allowed,
                    original=inp.compat == "original")


def analyse_layer(inp: LayerInputs, data: MaskedImageFolder, b: float, n_boot: int, seed: int,
                  level: float) -> LayerResult:
    """SPEC §3 with the bootstrap for one layer (logs the layer's warnings first)."""
    for message in inp.warnings:
        log.warning("%s: %s", inp.layer, message)
    nets = inp.nets
    log.info("%s: %s images, %s checkpoints, grid %d; bootstrap %d resamples", inp.layer,
             "/".join(str(len(nets[n].names)) for n in NETS), "/".join(str(len(nets[n].epochs)) for n in NETS),
             inp.grid, n_boot)
    inputs = {net: net_input(inp, net) for net in NETS}
    comp = compare(inputs["label"], inputs["distil"], b, n_boot, seed, level, paired=inp.paired)
    result = LayerResult(
        layer=inp.layer, names={n: nets[n].names for n in NETS}, epochs={n: nets[n].epochs for n in NETS},
        epochs_source={n: nets[n].epochs_source for n in NETS}, grid=inp.grid, image_size=inp.size,
        inputs={"--label-sigma": str(nets["label"].sigma.path), "--distil-sigma": str(nets["distil"].sigma.path),
                "--label-run": str(nets["label"].run), "--distil-run": str(nets["distil"].run), "--data": inp.data_root,
                "--split": inp.split},
        counts={"label_effective": len(nets["label"].sigma.effect), "distil_effective": len(nets["distil"].sigma.effect),
                "both": inp.both, "used_label": len(nets["label"].names), "used_distil": len(nets["distil"].names),
                "skipped": len(inp.skipped)},
        skipped=inp.skipped, mask_fallback=inp.fallback, mhat_skips_epoch0=inp.skip0, compat=inp.compat,
        foreground=inp.foreground.describe(), comparison=comp, notes=inp.notes + comp.notes)
    result.figure_data = {"H": {n: inputs[n].H for n in NETS}, "wd": {n: nets[n].wd_row for n in NETS},
                          "central": inp.foreground.source == "central"}
    return result


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


def render_figures(res: LayerResult, data: MaskedImageFolder, show_images: int, max_columns: int) -> dict[str, bytes]:
    """The PNG bytes of the layer's four figures, by figure key."""
    fd = res.figure_data
    c = res.comparison
    shown = [name for name in res.names["label"] if name in set(res.names["distil"])][:show_images]
    rows = {net: [res.names[net].index(name) for name in shown] for net in NETS}
    images = [_display_image(data, name, res.image_size, res.grid, fd["central"]) for name in shown]
    counts = "/".join(str(len(res.names[n])) for n in NETS) if res.names["label"] != res.names["distil"] \
        else str(len(res.names["label"]))
    tag = f"layer {res.layer}, {counts} images"
    figs = {
        "entropy_maps": plots.entropy_maps(images, fd["H"]["label"][rows["label"]], fd["H"]["distil"][rows["distil"]],
                                           res.epochs, f"Entropy maps at {res.layer} (first {len(shown)} of "
                                           f"{counts} images)", max_columns),
        "concept_curves": plots.concept_curves(res.epochs, c.curves, c.level, f"Visual concepts per image ({tag})"),
        "weight_distance": plots.weight_distance(
            {net: cumulative_distance(fd["wd"][net]) for net in NETS},
            {net: np.asarray(res.epochs[net])[getattr(c, net).mhat] for net in NETS},
            {net: c.summary[net]["D_mean"] for net in NETS},
            f"Cumulative weight distance and m̂ ({tag})"),
        "metric_panels": plots.metric_panels([r for r in c.rows if r["metric"] in {m.key for m in METRICS}],
                                             LABELS, c.level, f"The six metrics, label vs distil ({tag})"),
    }
    return figs
