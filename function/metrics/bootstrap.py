"""Paired percentile bootstrap over images: seeded, reproducible.

``paired_bootstrap(statistic, n, n_boot, seed)`` draws ``n_boot`` resamples of the ``n`` image indices
(with replacement) from ``numpy.random.default_rng(seed)`` and evaluates ``statistic(indices)`` — a
vector — on each.  "Paired" because the statistic sees the same indices for both nets, so a
difference (distil − label) is resampled image by image.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np


def paired_bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, n_boot: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(point, replicates)``: the statistic on all images and on ``n_boot`` resamples (n_boot, m)."""
    if n <= 0:
        raise ValueError("bootstrap needs at least one image")
    rng = np.random.default_rng(seed)
    point = np.asarray(statistic(np.arange(n)), dtype=np.float64)
    reps = np.empty((n_boot, point.size), dtype=np.float64)
    for r in range(n_boot):
        reps[r] = statistic(rng.integers(0, n, size=n))
    return point, reps


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentile bounds over axis 0 (NaN replicates ignored)."""
    if not 0 < level < 1:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    alpha = 100 * (1 - level) / 2
    reps = np.asarray(replicates, dtype=np.float64)
    if reps.shape[0] == 0:
        nan = np.full(reps.shape[1:], np.nan)
        return nan, nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN bounds
        lo, hi = np.nanpercentile(reps, [alpha, 100 - alpha], axis=0)
    return lo, hi


def mean_interval(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` with its bootstrap interval (a convenience for one sample)."""
    values = np.asarray(values, dtype=np.float64)
    point, reps = paired_bootstrap(lambda idx: values[idx].mean(keepdims=True), len(values), n_boot, seed)
    lo, hi = percentile_interval(reps, level)
    return float(point[0]), float(lo[0]), float(hi[0])
