"""Percentile bootstrap over images: seeded, reproducible.

``bootstrap(statistic, n_label, n_distil, n_boot, seed, paired)`` evaluates ``statistic(idx_label, idx_distil)``
— a vector — on all images and on ``n_boot`` resamples drawn from ``numpy.random.default_rng(seed)``.
*Paired* (the nets share their images, ``n_label == n_distil``): one resample of the image indices (with
replacement) serves both nets, so a difference distil − label is resampled image by image.  Unpaired (the
original's per-net image sets): each net's images are resampled on their own.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import numpy as np

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


def bootstrap(statistic: Statistic, n_label: int, n_distil: int, n_boot: int, seed: int,
              paired: bool = True, loop: Callable[[range], Iterable[int]] = iter) -> tuple[np.ndarray, np.ndarray]:
    """``(point, replicates)``: the statistic on all images and on ``n_boot`` resamples, (n_boot, m).
    ``loop`` wraps the resampling loop (a progress bar)."""
    if n_label <= 0 or n_distil <= 0:
        raise ValueError("bootstrap needs at least one image per net")
    if paired and n_label != n_distil:
        raise ValueError(f"a paired bootstrap needs as many images for both nets ({n_label} vs {n_distil})")
    rng = np.random.default_rng(seed)
    point = np.asarray(statistic(np.arange(n_label), np.arange(n_distil)), dtype=np.float64)
    reps = np.empty((n_boot, point.size), dtype=np.float64)
    for r in loop(range(n_boot)):
        idx = rng.integers(0, n_label, size=n_label)
        reps[r] = statistic(idx, idx if paired else rng.integers(0, n_distil, size=n_distil))
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
    point, reps = bootstrap(lambda idx, _: values[idx].mean(keepdims=True), len(values), len(values), n_boot, seed)
    lo, hi = percentile_interval(reps, level)
    return float(point[0]), float(lo[0]), float(hi[0])
