"""kdq's Python API: the method on your own model and your own arrays, without the stage scripts.

    import kdq
    fits = kdq.fit_sigma(model, layer="layer3", images=x, masks=m, config=kdq.SigmaConfig(samples=32))
    fits[0].sigma, fits[0].entropy_map, fits[0].steps_run, fits[0].final_lambda, fits[0].sigma_f2

    tracker = kdq.WeightDistance(model, {"conv": "layer4.1.conv2.weight", "fc3": "fc.weight"})  # in your loop

    result = kdq.compare(label_maps, distil_maps, masks, D_label, D_distil)
    print(result.table()); result.write_report("report/")

``fit_sigma`` is the σ fit of method.md §2 (:mod:`kdq.function.sigma.fit`) at any submodule (or torch.fx
graph node) of any ``nn.Module`` (a forward hook stops the forward at a submodule, so a model torch.fx cannot
trace works too); ``compare`` is the metrics stage's analysis (:mod:`kdq.function.metrics.measures`) on
in-memory σ maps.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdq.function.checks import (BOOTSTRAP_COUNT, LEVEL, NONNEGATIVE, POSITIVE_INT, SEED, CheckError, check_bool,
                                 check_epochs, check_grid, check_in, check_weight_distances)
from kdq.function.data.files import mask_fits
from kdq.function.data.masks import grey_values, mask_to_grid
from kdq.function.metrics.analysis import comparison_warnings
from kdq.function.metrics.caveats import single_run_caveat
from kdq.function.metrics.config import MetricsConfig
from kdq.function.metrics.measures import NetInput, compare_runs, mhat_allowed
from kdq.function.metrics.report import LayerResult, layer_tag, terminal_table, write_outputs
from kdq.function.sigma.effective import entropy_gap, keeps_image, usable_sigma_f2
from kdq.function.sigma.entropy import entropy_map
from kdq.function.sigma.fit import SigmaConfig, SigmaFit, SigmaFitter
from kdq.function.sigma.grid import upsample
from kdq.function.sigma.units import Cells, Injected, Points, Tokens, UnitSpace, module_output, unit_space
from kdq.models.registry import family_of
from kdq.models.taps import Tap, TapNotFound, tap_method, truncated


@dataclass
class SigmaResult:
    """One image's fit: σ* (g×g), its entropy map, how the fit ran, and — with a mask — the fg/bg test."""
    sigma: np.ndarray  # (g, g) σ* (tokens, points: (U,), NaN on padding): the noise scale kept (0: a failed fit)
    entropy_map: np.ndarray  # like sigma: log σ* + ½ log 2πe, low where the layer keeps the input
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


def fit_sigma(model: nn.Module, layer: str | nn.Module | Tap, inputs=None, foreground=None,
              config: SigmaConfig | None = None, seeds: Sequence[int] | None = None,
              device: torch.device | str | None = None, activation=F.relu, units: str | UnitSpace | None = None, *,
              images=None, masks=None) -> list[SigmaResult]:
    """Fit one σ map per input at the output of ``layer`` of ``model`` (method.md §2).

    ``units`` says what one σ value perturbs (method.md, "Units beyond images"): None or ``"cells"`` — images, σ on
    the config's g×g grid (below); ``"tokens"`` or :class:`kdq.Tokens` — ``inputs`` are token ids ``(N, L)``, the
    noise goes to the output of the submodule ``Tokens.embedding`` (default ``"embed"``), one σ per token, padding
    (``Tokens.mask``, else ids equal to ``Tokens.pad_id``, default 0) never a unit; ``"points"`` or
    :class:`kdq.Points` — ``inputs`` are point clouds ``(N, P, 3)``, one σ per point.  For tokens and points σ is
    relative to each input's own scale (:func:`kdq.function.sigma.units.unit_scale`), ``foreground`` is ``(N, U)``
    (one flag per token or point), and ``sigma``/``entropy_map`` are ``(U,)``, NaN on padding.  ``images`` and
    ``masks`` are the older names of ``inputs`` and ``foreground``.

    ``layer``: a submodule of ``model`` (``model.layer4[0].conv2``), its name (``"layer4.0.conv2"``) or the name
    of a torch.fx graph node that is not a submodule (``"layer4.0.add"``, a residual block's sum before its ReLU:
    the forward must then be traceable); a submodule is read with a forward hook, so any forward works.  A name
    that is neither is a ValueError naming the closest submodules and graph nodes.

    ``images``: ``(N, 3, S, S)`` (a tensor or a numpy array), normalised as the model expects (integer pixels are
    fitted as given, with a warning).  ``masks`` (optional): ``(N, H, W)`` foreground masks of the images' size or
    aspect ratio, or ``(N, g, g)`` cells; bool, uint8, int or float in [0, 1], a pixel is foreground where its value
    is > 0, and the original's bilinear rule takes a mask to the grid (method.md §2,
    :func:`~kdq.function.data.masks.grey_values`); they give each result its ``bg_minus_fg`` and ``effective``.
    ``config.lam`` None (the default) is the λ of the model's family (:func:`kdq.models.family_of`: 6 for a
    ResNet, 7 for a VGG, an AlexNet or any other net), as the sigma stage picks it (docs/method.md §2).
    ``seeds[i]`` seeds image i's noise (default 0, 1, …).  The model is put in eval mode and its gradients are off
    during the fit, as it was before afterwards.  ``activation`` is applied to the layer's output (ReLU: the
    method's ``h = ReLU(layer(x))``).  A bad argument is a ValueError or TypeError naming it (the rules of the sigma
    stage's flags, :mod:`kdq.function.checks`).
    """
    inputs = _renamed("inputs", inputs, "images", images, required=True)
    foreground = _renamed("foreground", foreground, "masks", masks)
    config = SigmaConfig() if config is None else config
    if not isinstance(config, SigmaConfig):
        raise TypeError(f"config must be a kdq.SigmaConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tap = _layer_tap(model, layer)
    space = _unit_spec(units, config.grid)
    if not isinstance(space, Cells):
        return _fit_units(model, tap, inputs, foreground, config, seeds, device, activation, space)
    images, masks = _images(inputs), foreground
    n, size = images.shape[0], images.shape[-1]
    check_grid("config.grid", config.grid, size)
    device = _device(model, device)
    seeds = _seeds(seeds, n)
    cells = None if masks is None else _mask_cells(masks, (images.shape[-2], size), config.grid, n)
    with _eval(model):
        fitter = SigmaFitter(truncated(model, tap).eval(), config, device, activation=activation,
                             family=family_of(model))
        fits = fitter.fit(images, seeds)
    out = []
    for i, fit in enumerate(fits):
        gap = None if cells is None else (entropy_gap(fit.sigma, cells[i]) if not fit.failed else float("nan"))
        with np.errstate(divide="ignore"):
            emap = entropy_map(fit.sigma)
        out.append(SigmaResult(fit.sigma, emap, fit.steps_run, fit.final_lambda, fit.sigma_f2, fit.best_step, fit,
                               gap))
    return out


def _renamed(name: str, value, old: str, old_value, required: bool = False):
    """The argument given as ``name`` or by its older name ``old`` (a TypeError when both or, ``required``,
    neither is given)."""
    if value is not None and old_value is not None:
        raise TypeError(f"give {name} or {old} (its older name), not both")
    value = old_value if value is None else value
    if required and value is None:
        raise TypeError(f"{name} is required")
    return value


def _unit_spec(units, grid: int) -> UnitSpace:
    """The unit space ``units`` names: None/"cells", "tokens", "points" (their defaults) or a space."""
    named = {"tokens": Tokens, "points": Points}
    if isinstance(units, str) and units in named:
        return named[units]()
    try:
        return unit_space(units, grid)
    except ValueError as exc:
        raise CheckError(f"units: {exc}") from None


def _fit_units(model: nn.Module, tap: Tap, inputs, foreground, config: SigmaConfig, seeds, device, activation,
               space: UnitSpace) -> list[SigmaResult]:
    """:func:`fit_sigma` for tokens and points: check the inputs, bind the space, fit, and report σ per unit."""
    from kdq.function.sigma.inputs import point_clouds, token_ids, unit_foreground

    device = _device(model, device)
    if isinstance(space, Tokens):
        if tap_method(model, tap.node) != "hook":
            raise CheckError(f"layer: a token fit taps a submodule, and {tap.node!r} is a graph node")
        try:
            embedding = model.get_submodule(space.embedding)
        except AttributeError:
            raise CheckError(f"units: the model has no submodule {space.embedding!r} to perturb (Tokens.embedding "
                             f"names the module whose output is the tokens' embeddings)") from None
        ids, valid = token_ids(inputs, space.mask, space.pad_id, getattr(model, "max_length", None))
        if isinstance(embedding, nn.Embedding) and int(ids.max()) >= embedding.num_embeddings:
            raise CheckError(f"inputs hold token id {int(ids.max())}; {space.embedding!r} has ids 0..."
                             f"{embedding.num_embeddings - 1}")
        ids = ids.to(device)
        with _eval(model):
            values = module_output(model, space.embedding, ids, space.call)
        if values.dim() != 3 or values.shape[:2] != ids.shape:
            raise CheckError(f"units: {space.embedding!r} gives {tuple(values.shape)} for ids {tuple(ids.shape)}, "
                             "not one embedding vector per token (N, L, D)")
        feature = Injected(model, space.embedding, tap.node, space.call)
        space = replace(space, mask=valid, ids=ids)
    else:
        values = point_clouds(inputs)
        valid = torch.ones(values.shape[:2], dtype=torch.bool) if space.mask is None else \
            torch.as_tensor(space.mask).bool()
        if valid.shape != values.shape[:2]:
            raise CheckError(f"the points mask must be (N, P) = {tuple(values.shape[:2])}, got {tuple(valid.shape)}")
        feature = truncated(model, tap)
        space = replace(space, mask=valid)
    flags = None if foreground is None else unit_foreground(foreground, valid)
    seeds = _seeds(seeds, values.shape[0])
    with _eval(model):
        fitter = SigmaFitter(feature.eval(), config, device, activation=activation, family=family_of(model))
        fits = fitter.fit(values.to(device, torch.float32), seeds, units=space)
    return [_unit_result(fit, valid[i].cpu().numpy(), None if flags is None else flags[i])
            for i, fit in enumerate(fits)]


def _unit_result(fit: SigmaFit, valid: np.ndarray, flags: np.ndarray | None) -> SigmaResult:
    """One unit fit's result: σ* and its entropy per unit, NaN on padding; the fg/bg gap over the real units."""
    sigma = fit.sigma.astype(np.float32)
    sigma[~valid] = np.nan
    gap = None
    if flags is not None:
        gap = entropy_gap(fit.sigma[valid], flags[valid]) if not fit.failed else float("nan")
    with np.errstate(divide="ignore"):
        emap = entropy_map(sigma)
    return SigmaResult(sigma, emap, fit.steps_run, fit.final_lambda, fit.sigma_f2, fit.best_step, fit, gap)


@contextlib.contextmanager
def _eval(model: nn.Module):
    """``model`` in eval mode with its gradients off, as it was afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def _layer_tap(model: nn.Module, layer) -> Tap:
    """The tap ``layer`` names: a submodule's or graph node's name, the submodule itself (an ``nn.Module`` of
    ``model``) or a :class:`~kdq.models.taps.Tap`; a TypeError or a ValueError naming ``layer`` (the stages'
    check, :func:`~kdq.models.taps.tap_method`, with the closest names) otherwise."""
    if isinstance(layer, nn.Module):
        name = next((name for name, module in model.named_modules() if module is layer), None)
        if name is None:
            raise ValueError(f"layer is a {type(layer).__name__} that is not a submodule of model")
        return Tap(name, f"{name}.weight")
    if not isinstance(layer, (str, Tap)):
        raise TypeError(f"layer must be a submodule of model or name one (or a graph node), got "
                        f"{type(layer).__name__}")
    tap = layer if isinstance(layer, Tap) else Tap(layer, f"{layer}.weight")
    try:
        tap_method(model, tap.node)
    except TapNotFound as exc:
        raise TapNotFound(f"layer: {exc}") from None
    return tap


def _images(images) -> torch.Tensor:
    """``images`` as a tensor ``(N, 3, S, S)`` (a numpy array is converted); a CheckError or TypeError names
    ``images``; integer pixels (uint8: not normalised) are fitted as given, with a warning."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    elif not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor or a numpy array (N, 3, S, S), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise CheckError(f"images must be (N, 3, S, S) (square RGB images), got {tuple(images.shape)}")
    if images.is_complex():
        raise TypeError(f"images must hold real numbers, got {images.dtype}")
    if not images.is_floating_point():
        warnings.warn(f"kdq.fit_sigma: images are {images.dtype} (raw pixel values?), fitted as given; a model "
                      "expects them as in training: floats, normalised (e.g. x / 255, then its mean and std)",
                      UserWarning, stacklevel=3)
    elif not torch.isfinite(images).all():
        raise CheckError("images hold NaN or infinite values")
    return images


def _seeds(seeds, n: int) -> list[int]:
    """One seed per image, each in the range of the stages' ``--seed`` (default 0, 1, …)."""
    seeds = list(range(n)) if seeds is None else list(seeds)
    if len(seeds) != n:
        raise CheckError(f"seeds must hold one seed per image ({n}), got {len(seeds)}")
    for i, value in enumerate(seeds):
        check_in(f"seeds[{i}]", value, SEED)
    return seeds


def _device(model: nn.Module, device) -> torch.device:
    """``device``, else the device of the model's first parameter (or buffer), else the CPU; a CheckError names
    ``model`` when its weights are on the meta device (shapes without values)."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        raise CheckError("model has parameters on the meta device (shapes without values): initialise or load its "
                         "weights first (e.g. model.to_empty(device='cpu'), then load_state_dict)")
    if device is not None:
        device = torch.device(device)
        if device.type == "meta":
            raise CheckError("device must hold values; 'meta' holds shapes only")
        return device
    return tensors[0].device if tensors else torch.device("cpu")


def _mask_array(masks, name: str = "masks") -> np.ndarray:
    """``masks`` (a tensor, an array or a list of equal-shaped masks) as one array of shape ``(N, H, W)``; a
    CheckError names ``name`` and the shape otherwise (a ``(N, 1, H, W)`` stack among them)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu()
        masks = (masks.double() if masks.is_floating_point() else masks).numpy()
    try:
        array = np.asarray(masks)
    except ValueError:
        array = np.empty(0, dtype=object)
    if array.dtype == object:
        raise CheckError(f"{name} must be one (N, H, W) array: the masks given differ in shape")
    if array.ndim == 4 and array.shape[1] == 1:
        raise CheckError(f"{name} must be (N, H, W), one 2-D mask per image, got {array.shape}: drop the channel "
                         f"axis ({name}[:, 0])")
    if array.ndim != 3:
        raise CheckError(f"{name} must be (N, H, W), one 2-D mask per image, got shape {array.shape}")
    return array


def _mask_cells(masks, image_hw: tuple[int, int], grid: int, n: int, name: str = "masks") -> list[np.ndarray]:
    """The ``(g, g)`` foreground cells of each of ``n`` images' masks: ``(N, g, g)`` cells, or masks of the images'
    size or aspect ratio (``image_hw``: the images' H, W), taken to the grid by :func:`mask_to_grid`."""
    array = _mask_array(masks, name)
    if array.shape[0] != n:
        raise CheckError(f"{name} holds {array.shape[0]} masks for {n} images")
    (h, w), (ih, iw) = array.shape[1:], image_hw
    if (h, w) != (grid, grid) and not mask_fits((w, h), (iw, ih)):
        raise CheckError(f"{name} are {h}×{w} but the images are {ih}×{iw}: a mask must have its image's size or "
                         f"aspect ratio, or be the {grid}×{grid} grid of cells")
    return [_cells(array[i], iw, grid, f"{name}[{i}]") for i in range(n)]


def _cells(mask, size: int, grid: int, name: str = "mask") -> np.ndarray:
    """One image's ``(g, g)`` foreground cells: a cell or pixel is foreground when its value is > 0, for every
    dtype (:func:`~kdq.function.data.masks.grey_values`); a ``g×g`` mask is the cells themselves, any other is
    resized as method.md §2 (bilinear to ``size``, nearest to ``g``)."""
    grey = grey_values(mask, name)
    if grey.shape == (grid, grid):
        return grey > 0
    return mask_to_grid(grey, size, grid)


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

    def write_report(self, folder: str | Path, show_images: int = MetricsConfig.show_images,
                     max_columns: int = MetricsConfig.max_columns) -> Path:
        """Write ``metrics.json``, ``metrics.csv``, ``report.md`` and the figures into ``folder``; returns the
        report's path.  With ``images`` given to :func:`compare`, the entropy-map figure shows the first
        ``show_images`` of them at up to ``max_columns`` checkpoints (the metrics stage's ``--show-images`` and
        ``--max-columns``)."""
        from kdq.function.io.atomic import write_bytes
        from kdq.function.metrics.analysis import render_figures

        check_in("show_images", show_images, POSITIVE_INT)
        check_in("max_columns", max_columns, POSITIVE_INT)
        folder = Path(folder)
        shown = self.layer.figure_data.get("images")
        for key, png in render_figures(self.layer, shown[:show_images] if shown else None, max_columns).items():
            rel = f"figures/{layer_tag(self.layer, '{}_')}{key}.png"
            self.layer.figures[key] = rel
            write_bytes(folder / rel, png)
        c = self.layer.comparison
        write_outputs(folder, [self.layer], {"b": self.layer.figure_data["b"], "bootstrap": c.n_boot, "seed": c.seed},
                      {"stage": "kdq.compare"}, c.level)
        return folder / "report.md"


def compare(label_maps, distil_maps, masks, D_label, D_distil, *, b: float = MetricsConfig.b,
            n_boot: int = MetricsConfig.bootstrap, seed: int = MetricsConfig.seed, level: float = MetricsConfig.level,
            epochs_label: Sequence[int] | None = None, epochs_distil: Sequence[int] | None = None,
            skip_epoch0: bool = False, names: Sequence[str] | None = None, layer: str | None = None,
            images=None, units: str | None = None) -> Comparison:
    """method.md §3 on in-memory maps: label net vs distil net on the same N images.

    ``label_maps``/``distil_maps``: σ* per image and checkpoint, ``(N, K, g, g)`` (each net its own K, oldest
    first), or ``(R, N, K, g, g)`` for R training runs of that net (each trained with another seed; then
    ``D_label``/``D_distil`` are ``(R, K)``, one row per run): every metric is computed per run, a net's value is
    the mean over its runs, and the interval of distil − label is the two-level bootstrap over runs and images
    (method.md §3, "Several training runs").  ``masks``: the images' foregrounds, ``(N, g, g)`` cells or square ``(N, S, S)`` masks (taken to the
    grid by the original's bilinear rule); bool, uint8, int or float in [0, 1], foreground where > 0 (as in
    :func:`fit_sigma`).  ``D_label``/``D_distil``: the cumulative weight distance of the layer's weight at each
    checkpoint, ``(K,)``, finite, ≥ 0 and non-decreasing (``np.cumsum`` of a :class:`WeightDistance` row, at the
    checkpoint epochs).  ``epochs_*``: distinct, increasing epochs ≥ 0.  ``skip_epoch0`` leaves epoch 0 out of m̂
    (the ResNet rule; kept when it is the only checkpoint).  ``b``, ``n_boot``, ``seed`` and ``level`` follow the
    rules of the metrics stage's ``--b``, ``--bootstrap``, ``--seed`` and ``--level``; a bad argument is a
    ValueError or TypeError naming it.  ``layer`` (optional) names the layer in the table, the report and the
    figures (without it they name none).  ``images`` (optional): the N images, ``(N, 3, S, S)`` or ``(N, S, S, 3)``
    (a tensor or an array; normalised floats are rescaled for display), for the report's entropy-map figure.

    ``units="tokens"`` or ``"points"``: unit-level maps (method.md, "Units beyond images") — ``label_maps`` /
    ``distil_maps`` are ``(N, K, U)`` (or ``(R, N, K, U)``), σ* per token or point as :func:`fit_sigma` gives it,
    NaN on the units that are not units (padding; the same in every map of an input), and ``masks`` is the ``(N, U)``
    foreground flags.  The metrics are the same formulas over units; padding is neither foreground nor background.
    """
    if units not in (None, "cells"):
        return _compare_units(units, label_maps, distil_maps, masks, D_label, D_distil, b=b, n_boot=n_boot,
                              seed=seed, level=level, epochs_label=epochs_label, epochs_distil=epochs_distil,
                              skip_epoch0=skip_epoch0, names=names, layer=layer, images=images)
    for name, value, rule in (("b", b, NONNEGATIVE), ("n_boot", n_boot, BOOTSTRAP_COUNT), ("seed", seed, SEED),
                              ("level", level, LEVEL)):
        check_in(name, value, rule)  # the rules of the metrics stage's --b, --bootstrap, --seed, --level
    check_bool("skip_epoch0", skip_epoch0)
    maps = {"label": _run_maps("label_maps", label_maps), "distil": _run_maps("distil_maps", distil_maps)}
    D = {net: _run_distances(f"D_{net}", value, maps[net].shape[0])
         for net, value in (("label", D_label), ("distil", D_distil))}
    fg_masks = _mask_array(masks)
    n, (h, w) = fg_masks.shape[0], fg_masks.shape[1:]
    if n == 0:
        raise CheckError("masks holds no image: compare needs at least one")
    if h != w:
        raise CheckError(f"masks must be (N, g, g) cells or square (N, S, S) masks, got {fg_masks.shape}")
    grid = maps["label"].shape[-1]
    fg = np.stack([_cells(fg_masks[i], w, grid, f"masks[{i}]") for i in range(n)])
    return _compare_maps(maps, D, fg, None, fg_masks, w, grid, b=b, n_boot=n_boot, seed=seed, level=level,
                         epochs_label=epochs_label, epochs_distil=epochs_distil, skip_epoch0=skip_epoch0, names=names,
                         layer=layer, images=images, given_arrays={"label_maps": label_maps,
                                                                   "distil_maps": distil_maps, "D_label": D_label,
                                                                   "D_distil": D_distil})


def _compare_units(units: str, label_maps, distil_maps, masks, D_label, D_distil, *, images, **options) -> Comparison:
    """:func:`compare` on unit-level maps ``(N, K, U)``: checked, then compared as a 1×U grid, NaN off the units."""
    from kdq.function.sigma.units import UNIT_KINDS

    if units not in UNIT_KINDS:
        raise CheckError(f"units must be one of {', '.join(UNIT_KINDS)}, got {units!r}")
    if images is not None:
        raise CheckError("images are shown for cells only: leave them out with units="
                         f"{units!r} (the stage's report draws tokens and points)")
    maps = {"label": _run_maps("label_maps", label_maps, unit_level=True),
            "distil": _run_maps("distil_maps", distil_maps, unit_level=True)}
    D = {net: _run_distances(f"D_{net}", value, maps[net].shape[0])
         for net, value in (("label", D_label), ("distil", D_distil))}
    valid = np.isfinite(maps["label"][0, :, 0])  # (N, U): the units of each input
    for net, arr in maps.items():
        if (np.isfinite(arr) != valid[None, :, None]).any():
            raise CheckError(f"{net}_maps must be NaN on the same units (padding) of an input at every checkpoint "
                             "and in both nets: the units that are not units")
    flags = np.asarray(masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else masks)
    if flags.ndim != 2 or flags.shape != valid.shape:
        raise CheckError(f"masks must be (N, U) = {valid.shape}, one foreground flag per unit, got {flags.shape}")
    fg = flags > 0
    if (fg & ~valid).any():
        raise CheckError(f"masks[{int((fg & ~valid).any(axis=1).argmax())}] marks padding as foreground")
    maps = {net: np.where(np.isfinite(arr), arr, 1.0)[:, :, :, None, :] for net, arr in maps.items()}
    given = {"label_maps": label_maps, "distil_maps": distil_maps, "D_label": D_label, "D_distil": D_distil}
    return _compare_maps(maps, D, fg[:, None], valid[:, None], flags, valid.shape[1], valid.shape[1],
                         images=None, given_arrays=given, **options)


def _compare_maps(maps, D, fg, valid, fg_masks, width, grid, *, b, n_boot, seed, level, epochs_label, epochs_distil,
                  skip_epoch0, names, layer, images, given_arrays) -> Comparison:
    """The checks and the analysis shared by cells and units: ``maps`` ``(R, N, K, g, g)``, ``fg`` ``(N, g, g)``,
    ``valid`` like ``fg`` or None (every cell a unit); the entropy is NaN off the units."""
    n = fg.shape[0]
    _check_maps_and_distances(maps, D, fg)
    given = {"label": epochs_label, "distil": epochs_distil}
    epochs = {net: check_epochs(f"epochs_{net}", range(maps[net].shape[2]) if given[net] is None else given[net])
              for net in maps}
    for net, eps in epochs.items():
        if len(eps) != maps[net].shape[2]:
            raise CheckError(f"epochs_{net} must name each of the {maps[net].shape[2]} checkpoints, got {len(eps)}")
    if names is not None and len(names) != n:
        raise CheckError(f"names must hold one name per image ({n}), got {len(names)}")
    if layer is not None and not (isinstance(layer, str) and layer):
        raise TypeError(f"layer must be a non-empty str naming the layer (or None), got {layer!r}")
    shown = None if images is None else _display_images(images, fg_masks, fg, n)
    entropies = {net: entropy_map(maps[net]) for net in maps}
    if valid is not None:  # (N, 1, U) against (R, N, K, 1, U)
        entropies = {net: np.where(valid[None, :, None], H, np.nan) for net, H in entropies.items()}
    runs = {net: [NetInput(H=H, fg=fg, D_at=d, allowed=mhat_allowed(epochs[net], skip_epoch0), valid=valid)
                  for H, d in zip(entropies[net], D[net])] for net in maps}
    comp = compare_runs(runs["label"], runs["distil"], b, n_boot, seed, level)
    cautions = comparison_warnings(comp)
    for message in cautions:
        warnings.warn(f"kdq.compare: {message}", stacklevel=3)
    names = list(names or (f"image_{i}" for i in range(fg.shape[0])))
    arrays = {name: given_arrays[name] for name in ("label_maps", "distil_maps")}
    arrays.update(masks=fg_masks, D_label=given_arrays["D_label"], D_distil=given_arrays["D_distil"], images=images)
    inputs = _inputs_record(arrays, epochs, given)
    result = _api_result(comp, runs, D, layer, names, epochs, grid, width if shown is None else shown[0][1].shape[0],
                         inputs, skip_epoch0, cautions, b, shown)
    return Comparison(result)


def _check_maps_and_distances(maps: dict[str, np.ndarray], D: dict[str, list[np.ndarray]], fg: np.ndarray) -> None:
    """Each net's maps over the masks' N images and grid, positive and finite; one non-decreasing distance per
    checkpoint and run (a CheckError naming the argument)."""
    for net, arr in maps.items():
        shape = arr.shape[1:] if arr.shape[0] == 1 else arr.shape
        if arr.shape[1] != fg.shape[0] or arr.shape[-2:] != fg.shape[-2:]:
            raise CheckError(f"{net}_maps must be (N, K, g, g) over the masks' N images and grid, got {shape} "
                             f"for masks {fg.shape}")
        for r, d in enumerate(D[net]):
            name = f"D_{net}" + (f"[{r}]" if arr.shape[0] > 1 else "")
            if d.shape != (arr.shape[2],):
                raise CheckError(f"{name} must hold one value per checkpoint ({arr.shape[2]}), got {d.shape}")
            if (np.diff(d) < 0).any():
                raise CheckError(f"{name} must not decrease: it is the cumulative distance at each checkpoint, oldest "
                                 f"first (np.cumsum of a WeightDistance row), got {d.tolist()}")
        if not (np.isfinite(arr).all() and (arr > 0).all()):
            raise CheckError(f"{net}_maps must be positive and finite (σ*)")


def _api_result(comp, runs, D, layer, names, epochs, grid, image_size, inputs, skip_epoch0, cautions, b,
                shown) -> LayerResult:
    """The report's record of an in-memory comparison (one layer; every image used by both nets)."""
    result = LayerResult(layer=layer, names={"label": names, "distil": names}, epochs=epochs,
                         epochs_source={"label": "given", "distil": "given"}, grid=grid,
                         image_size=image_size, inputs=inputs, counts={
                             "label_effective": len(names), "distil_effective": len(names), "both": len(names),
                             "used_label": len(names), "used_distil": len(names), "skipped": 0},
                         skipped={}, mask_fallback=[], mhat_skips_epoch0=skip_epoch0, compat="kdq",
                         foreground={"foreground": "given"}, comparison=comp, warnings=cautions,
                         notes=list(comp.notes), not_paper=single_run_caveat(comp.n_runs),
                         runs={net: [{"run": f"{net}_maps[{r}]", "seed": None} for r in range(len(runs[net]))]
                               for net in runs})
    result.figure_data = {"H": {net: runs[net][0].H for net in runs}, "wd": None,
                          "D": {net: D[net][0] for net in D}, "central": False, "b": b,
                          "images": None if shown is None else [(name, rgb, mask) for name, (rgb, mask)
                                                                 in zip(names, shown)]}
    return result


def _inputs_record(arrays: dict, epochs: dict[str, list[int]], given: dict) -> dict[str, str]:
    """What :func:`compare` was given, for the report's "Inputs": each array's shape and dtype (the distances
    and the epochs by value); ``images`` only when given."""
    out = {}
    for name, value in arrays.items():
        if value is None:
            continue
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        text = f"{type(value).__name__} {tuple(array.shape)}, {array.dtype}"
        if name.startswith("D_"):
            text += ": " + " ".join(f"{v:.4g}" for v in array.ravel()[:20]) + (" …" if array.size > 20 else "")
        out[name] = text
    for net in ("label", "distil"):
        out[f"epochs_{net}"] = " ".join(map(str, epochs[net])) + ("" if given[net] is not None else " (default)")
    return out


def _display_images(images, masks: np.ndarray, cells: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB uint8 ``(S, S, 3)``, foreground bool ``(S, S)``) of each of the ``n`` images, for the entropy-map
    figure: ``images`` ``(N, 3, S, S)`` or ``(N, S, S, 3)``; integers are clipped to 0…255, floats (normalised)
    rescaled to it per image.  The foreground is the mask where it is ``S×S``, else its cells upsampled."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim == 4 and array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[1] != array.shape[2]:
        raise CheckError(f"images must be (N, 3, S, S) or (N, S, S, 3) square RGB images, got {array.shape}")
    if array.shape[0] != n:
        raise CheckError(f"images holds {array.shape[0]} images for {n} masks")
    if not (np.issubdtype(array.dtype, np.number) and np.isfinite(array).all()):
        raise CheckError("images must hold finite real numbers")
    size = array.shape[1]
    out = []
    for i in range(n):
        image = array[i].astype(np.float64)
        if not np.issubdtype(array.dtype, np.integer):
            low, high = image.min(), image.max()
            image = (image - low) / (high - low) * 255 if high > low else np.zeros_like(image)
        rgb = np.clip(np.round(image), 0, 255).astype(np.uint8)
        mask = grey_values(masks[i], f"masks[{i}]") > 0 if masks.shape[1:] == (size, size) else \
            upsample(cells[i], size).astype(bool)
        out.append((rgb, mask))
    return out


def _run_maps(name: str, maps, unit_level: bool = False) -> np.ndarray:
    """σ* of one net as ``(R, N, K, g, g)``: one run ``(N, K, g, g)`` or ``R`` training runs stacked; unit-level
    maps (``unit_level``) as ``(R, N, K, U)`` from ``(N, K, U)`` or ``(R, N, K, U)``."""
    arr = np.asarray(maps, dtype=np.float64)
    axes, shape = (3, "(N, K, U)") if unit_level else (4, "(N, K, g, g)")
    if arr.ndim == axes:
        return arr[None]
    if arr.ndim != axes + 1:
        raise CheckError(f"{name} must be {shape}, or (R, {shape[1:]} for R training runs, got shape {arr.shape}")
    return arr


def _run_distances(name: str, D, n_runs: int) -> list[np.ndarray]:
    """One net's cumulative weight distances per run: ``(K,)`` for one run, ``(R, K)`` for ``R`` runs; each row
    checked by the stage's rule (finite, ≥ 0)."""
    if n_runs == 1:
        return [check_weight_distances(name, D).astype(np.float64)]
    rows = list(D) if isinstance(D, (list, tuple, np.ndarray)) else []
    if len(rows) != n_runs or any(np.ndim(row) != 1 for row in rows):
        raise CheckError(f"{name} must be (R, K), one row per training run ({n_runs}), got shape {np.shape(D)}")
    return [check_weight_distances(f"{name}[{r}]", row).astype(np.float64) for r, row in enumerate(rows)]


__all__ = ["Comparison", "Points", "SigmaConfig", "SigmaResult", "Tokens", "compare", "fit_sigma"]
