"""kdq's Python API: the method on your own model and your own arrays, without the stage scripts.

    import kdq
    fits = kdq.fit_sigma(model, layer="layer3", images=x, masks=m, config=kdq.SigmaConfig(samples=32))
    fits[0].sigma, fits[0].entropy_map, fits[0].steps_run, fits[0].final_lambda, fits[0].sigma_f2

    tracker = kdq.WeightDistance(model, {"conv": "layer4.1.conv2.weight", "fc3": "fc.weight"})  # in your loop

    result = kdq.compare(label_maps, distil_maps, masks, D_label, D_distil)
    print(result.table()); result.write_report("report/")

``fit_sigma`` is the σ fit of method.md §2 (:mod:`kdq.function.sigma.fit`) at any named submodule of any
``nn.Module`` (a forward hook stops the forward there, so a model torch.fx cannot trace works too); ``compare`` is
the metrics stage's analysis (:mod:`kdq.function.metrics.measures`) on in-memory σ maps.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdq.function.data.masks import mask_to_grid
from kdq.function.metrics.analysis import comparison_warnings
from kdq.function.metrics.measures import NetInput, compare_nets, mhat_allowed
from kdq.function.metrics.report import LayerResult, terminal_table, write_outputs
from kdq.function.sigma.effective import entropy_gap, keeps_image, usable_sigma_f2
from kdq.function.sigma.entropy import entropy_map
from kdq.function.sigma.fit import SigmaConfig, SigmaFit, SigmaFitter
from kdq.models.taps import Tap, truncated


@dataclass
class SigmaResult:
    """One image's fit: σ* (g×g), its entropy map, how the fit ran, and — with a mask — the fg/bg test."""
    sigma: np.ndarray  # (g, g) σ*: the noise scale kept (all 0 for a failed fit)
    entropy_map: np.ndarray  # (g, g) log σ* + ½ log 2πe: low where the layer keeps the input
    steps_run: int
    final_lambda: float  # λ after the decision step (×1.5 when the target entropy was not reached)
    sigma_f2: float  # σ_f²: the feature's variance under σ₀ noise (0: the image is non-effective)
    best_step: int  # the step whose mean entropy is nearest the target (-1: failed)
    fit: SigmaFit  # every per-step record (entropy, feature and penalty loss, the σ of each step)
    bg_minus_fg: float | None = None  # mean_bg(H) − mean_fg(H) with a mask (method.md §2.5)

    @property
    def effective(self) -> bool | None:
        """Whether the image passes the effective-sample rule (σ_f² > 0 and bg − fg ≥ 0); None without a mask."""
        if self.bg_minus_fg is None:
            return None
        return usable_sigma_f2(self.sigma_f2) and keeps_image(self.bg_minus_fg)


def fit_sigma(model: nn.Module, layer: str | Tap, images: torch.Tensor, masks=None,
              config: SigmaConfig | None = None, seeds: Sequence[int] | None = None,
              device: torch.device | str | None = None, activation=F.relu) -> list[SigmaResult]:
    """Fit one σ map per image at the output of submodule ``layer`` of ``model`` (method.md §2).

    ``images``: ``(N, 3, S, S)``, normalised as the model expects.  ``masks`` (optional): ``(N, H, W)`` foreground
    masks (bool or grey values, any resolution; the original's bilinear rule takes them to the grid) or ``(N, g, g)``
    bool cells; they give each result its ``bg_minus_fg`` and ``effective``.  ``seeds[i]`` seeds image i's noise
    (default 0, 1, …).  The model is put in eval mode and its gradients are off during the fit, as it was
    before afterwards.  ``activation`` is applied to the layer's output (ReLU: the method's ``h = ReLU(layer(x))``).
    """
    config = config or SigmaConfig()
    tap = layer if isinstance(layer, Tap) else Tap(layer, f"{layer}.weight")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, S, S), got {tuple(images.shape)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n, size = images.shape[0], images.shape[-1]
    seeds = list(range(n)) if seeds is None else list(seeds)
    cells = None if masks is None else [_cells(m, size, config.grid) for m in masks]
    if cells is not None and len(cells) != n:
        raise ValueError(f"{n} images but {len(cells)} masks")
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        fitter = SigmaFitter(truncated(model, tap).eval(), config, device, activation=activation)
        fits = fitter.fit(images, seeds)
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    out = []
    for i, fit in enumerate(fits):
        gap = None if cells is None else (entropy_gap(fit.sigma, cells[i]) if not fit.failed else float("nan"))
        with np.errstate(divide="ignore"):
            emap = entropy_map(fit.sigma)
        out.append(SigmaResult(fit.sigma, emap, fit.steps_run, fit.final_lambda, fit.sigma_f2, fit.best_step, fit,
                               gap))
    return out


def _cells(mask, size: int, grid: int) -> np.ndarray:
    mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if mask.shape == (grid, grid):
        return mask.astype(bool)
    return mask_to_grid(mask if mask.dtype == bool else mask.astype(np.uint8), size, grid)


@dataclass
class Comparison:
    """The result of :func:`compare`: the table of method.md §3's metrics, label vs distil, with bootstrap intervals."""
    layer: LayerResult

    @property
    def rows(self) -> list[dict]:
        """One dict per metric: ``metric``, ``label``, ``distil``, ``difference``, ``difference_ci``, ``verdict`` …"""
        return self.layer.comparison.rows

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        return self.layer.comparison.summary

    def table(self) -> str:
        """The table as aligned text."""
        return terminal_table([self.layer], self.layer.comparison.level)

    def write_report(self, folder: str | Path) -> Path:
        """Write ``metrics.json``, ``metrics.csv``, ``report.md`` and the figures into ``folder``; returns the
        report's path."""
        from kdq.function.io.atomic import write_bytes
        from kdq.function.metrics.analysis import render_figures

        folder = Path(folder)
        for key, png in render_figures(self.layer, None, 8).items():
            rel = f"figures/{self.layer.layer}_{key}.png"
            self.layer.figures[key] = rel
            write_bytes(folder / rel, png)
        c = self.layer.comparison
        write_outputs(folder, [self.layer], {"b": self.layer.figure_data["b"], "bootstrap": c.n_boot, "seed": c.seed},
                      {"stage": "kdq.compare"}, c.level)
        return folder / "report.md"


def compare(label_maps, distil_maps, masks, D_label, D_distil, *, b: float = 0.2, n_boot: int = 1000,
            seed: int = 0, level: float = 0.95, epochs_label: Sequence[int] | None = None,
            epochs_distil: Sequence[int] | None = None, skip_epoch0: bool = False, names: Sequence[str] | None = None,
            layer: str = "layer") -> Comparison:
    """method.md §3 on in-memory maps: label net vs distil net on the same N images.

    ``label_maps``/``distil_maps``: σ* per image and checkpoint, ``(N, K, g, g)`` (each net its own K, oldest
    first).  ``masks``: the images' foregrounds, ``(N, g, g)`` bool cells or ``(N, S, S)`` masks (taken to the grid
    by the original's bilinear rule).  ``D_label``/``D_distil``: the cumulative weight
    distance of the layer's weight at each checkpoint, ``(K,)`` (``np.cumsum`` of a :class:`WeightDistance` row,
    at the checkpoint epochs).  ``skip_epoch0`` leaves epoch 0 out of m̂ (the ResNet rule; kept when it is the only
    checkpoint).
    """
    maps = {"label": np.asarray(label_maps, dtype=np.float64), "distil": np.asarray(distil_maps, dtype=np.float64)}
    D = {"label": np.asarray(D_label, dtype=np.float64), "distil": np.asarray(D_distil, dtype=np.float64)}
    grid = maps["label"].shape[-1]
    fg = np.stack([_cells(m, np.asarray(m).shape[-1], grid) for m in masks])
    for net, arr in maps.items():
        if arr.ndim != 4 or arr.shape[0] != fg.shape[0] or arr.shape[-2:] != fg.shape[-2:]:
            raise ValueError(f"{net}_maps must be (N, K, g, g) over the masks' N images and grid, got {arr.shape} "
                             f"for masks {fg.shape}")
        if D[net].shape != (arr.shape[1],):
            raise ValueError(f"D_{net} must hold one value per checkpoint ({arr.shape[1]}), got {D[net].shape}")
        if not (np.isfinite(arr).all() and (arr > 0).all()):
            raise ValueError(f"{net}_maps must be positive and finite (σ*)")
    epochs = {"label": list(epochs_label or range(maps["label"].shape[1])),
              "distil": list(epochs_distil or range(maps["distil"].shape[1]))}
    for net, eps in epochs.items():
        if len(eps) != maps[net].shape[1]:
            raise ValueError(f"epochs_{net} must name each of the {maps[net].shape[1]} checkpoints, got {len(eps)}")
    nets = {net: NetInput(H=entropy_map(maps[net]), fg=fg, D_at=D[net],
                          allowed=mhat_allowed(epochs[net], skip_epoch0))
            for net in maps}
    comp = compare_nets(nets["label"], nets["distil"], b, n_boot, seed, level)
    cautions = comparison_warnings(comp)
    for message in cautions:
        warnings.warn(f"kdq.compare: {message}", stacklevel=2)
    names = list(names or (f"image_{i}" for i in range(fg.shape[0])))
    result = LayerResult(layer=layer, names={"label": names, "distil": names}, epochs=epochs,
                         epochs_source={"label": "given", "distil": "given"}, grid=grid,
                         image_size=np.asarray(masks[0]).shape[-1], inputs={}, counts={
                             "label_effective": len(names), "distil_effective": len(names), "both": len(names),
                             "used_label": len(names), "used_distil": len(names), "skipped": 0},
                         skipped={}, mask_fallback=[], mhat_skips_epoch0=skip_epoch0, compat="kdq",
                         foreground={"foreground": "given"}, comparison=comp, warnings=cautions,
                         notes=list(comp.notes))
    result.figure_data = {"H": {net: nets[net].H for net in nets}, "wd": None, "D": D, "central": False, "b": b}
    return Comparison(result)


__all__ = ["Comparison", "SigmaConfig", "SigmaResult", "compare", "fit_sigma"]
