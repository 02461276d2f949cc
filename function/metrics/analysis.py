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
from kdq.function.metrics.inputs import LayerInputs
from kdq.function.metrics.measures import METRICS, NetInput, compare
from kdq.function.metrics.report import LABELS, LayerResult
from kdq.function.sigma.entropy import entropy_map
from kdq.function.sigma.grid import upsample
from kdq.function.train.weight_distance import cumulative_distance, distance_at

log = logging.getLogger(__name__)


def analyse_layer(inp: LayerInputs, data: MaskedImageFolder, b: float, n_boot: int, seed: int,
                  level: float) -> LayerResult:
    """SPEC §3 with the bootstrap for one layer (logs the layer's warnings first)."""
    for message in inp.warnings:
        log.warning("%s: %s", inp.layer, message)
    pair, epochs, wd = inp.pair, inp.epochs, inp.wd
    D_at = {net: distance_at(wd[net], epochs) for net in wd}
    H = {"label": entropy_map(pair.label), "distil": entropy_map(pair.distil)}
    log.info("%s: %d images, %d checkpoints, grid %d; bootstrap %d resamples", inp.layer, len(pair.names),
             len(epochs), pair.label.shape[-1], n_boot)
    comp = compare(NetInput(H["label"], D_at["label"], inp.allowed),
                   NetInput(H["distil"], D_at["distil"], inp.allowed), inp.fg, b, n_boot, seed, level)
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
    n = min(show_images, len(res.names))
    images = [_display_image(data, name, res.image_size, res.grid, fd["central"]) for name in res.names[:n]]
    tag = f"layer {res.layer}, {len(res.names)} images"
    figs = {
        "entropy_maps": plots.entropy_maps(images, fd["H"]["label"][:n], fd["H"]["distil"][:n], res.epochs,
                                           f"Entropy maps at {res.layer} (first {n} of {len(res.names)} images)",
                                           max_columns),
        "concept_curves": plots.concept_curves(res.epochs, c.curves, c.level, f"Visual concepts per image ({tag})"),
        "weight_distance": plots.weight_distance(
            {net: cumulative_distance(fd["wd"][net]) for net in fd["wd"]},
            {net: np.asarray(res.epochs)[getattr(c, net).mhat] for net in ("label", "distil")},
            {net: c.summary[net]["D_mean"] for net in ("label", "distil")},
            f"Cumulative weight distance and m̂ ({tag})"),
        "metric_panels": plots.metric_panels([r for r in c.rows if r["metric"] in {m.key for m in METRICS}],
                                             LABELS, c.level, f"The six metrics, label vs distil ({tag})"),
    }
    return figs
