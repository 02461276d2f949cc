"""The effective-sample rule of docs/method.md §2.5: which images a sigma run keeps.

An image is *non-effective* when σ_f² is 0 (or not finite) at any checkpoint, or when, at a checkpoint at or
after :func:`rule_start`, its background entropy is not above its foreground entropy:
``mean_bg(H) − mean_fg(H) < 0`` or NaN (a map with no foreground or no background cell gives NaN).
"""
from __future__ import annotations

import math

import numpy as np

from kdq.function.sigma.entropy import entropy_map


def entropy_gap(sigma: np.ndarray, foreground: np.ndarray) -> float:
    """``mean_bg(H) − mean_fg(H)`` of one σ map (NaN when either region is empty or σ ≤ 0)."""
    h = entropy_map(sigma)
    fg = np.asarray(foreground, dtype=bool)
    if fg.all() or not fg.any():
        return float("nan")
    with np.errstate(invalid="ignore"):
        return float(h[~fg].mean() - h[fg].mean())


def keeps_image(gap: float) -> bool:
    """The rule at one checkpoint: the image stays effective when its fg/bg gap is ≥ 0 (NaN drops it)."""
    return not (math.isnan(gap) or gap < 0)


def usable_sigma_f2(sigma_f2: float) -> bool:
    """σ_f² = 0 means the layer ignores the noise entirely: such an image is non-effective (so is NaN/inf)."""
    return math.isfinite(sigma_f2) and sigma_f2 > 0


def drop_reason(sigma_f2: float, gap: float, epoch: int, start: int | None) -> str | None:
    """Why an image stops being effective at checkpoint ``epoch`` — None while it stays effective.

    ``gap`` is :func:`entropy_gap` of the checkpoint's σ*; ``start`` the first epoch of the fg/bg rule
    (:func:`rule_start`), None when the rule is off.
    """
    if not usable_sigma_f2(sigma_f2):
        return f"sigma_f2 = {sigma_f2} at epoch {epoch}"
    if start is not None and epoch >= start and not keeps_image(gap):
        return f"background entropy below foreground at epoch {epoch} (gap {gap:.4g})"
    return None


def rule_start(total_epochs: int) -> int:
    """The first epoch at which the fg/bg rule applies: 40, as the original code (also for 400-epoch runs), for
    runs of 150 epochs or more; 40 of 150 scaled to a shorter run."""
    return 40 if total_epochs >= 150 else round(40 * total_epochs / 150)
