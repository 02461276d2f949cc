"""Percentile bootstrap over images: seeded, reproducible.

``bootstrap(statistic, n_label, n_distil, n_boot, seed, paired)`` evaluates ``statistic(idx_label, idx_distil)``
— a vector — on all images and on ``n_boot`` resamples drawn from ``numpy.random.default_rng(seed)``.
*Paired* (the nets share their images, ``n_label == n_distil``): one resample of the image indices (with
replacement) serves both nets, so a difference distil − label is resampled image by image.  Unpaired (the
original's per-net image sets): each net's images are resampled on their own.

``two_level_bootstrap(statistic, n_images, n_boot, seed, paired)`` is the bootstrap over training runs and images
(docs/method.md §3, "Several training runs"): every net has one or more runs (training seeds), run ``r`` of a net
measured on ``n_images[net][r]`` images.  One replicate draws, from one ``numpy.random.default_rng(seed)`` and in
this order:

* *paired* (every run of both nets measured on the same images): the image indices
  ``rng.integers(0, N, size=N)``, one draw shared by every run; then for each net in turn with more than one run the
  run indices ``rng.integers(0, R, size=R)`` (a net with a single run draws nothing);
* *nested* (the runs' images differ): for each net in turn, its run indices ``rng.integers(0, R, size=R)`` (none for
  a single run), then for each drawn run in order that run's image indices ``rng.integers(0, N_r, size=N_r)``.

A net's value in a replicate is the mean, over its drawn runs (with repetition), of the statistic of that run on its
drawn images.  With one run per net and paired images this is exactly the paired :func:`bootstrap`.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import numpy as np

from kdq.function.metrics.config import MetricsConfig

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


RunStatistic = Callable[[str, int, np.ndarray], np.ndarray]


def pooled(values: list[np.ndarray]) -> np.ndarray:
    """The mean over runs of per-run statistic vectors; a single run's vector unchanged (bit for bit)."""
    return values[0].copy() if len(values) == 1 else np.mean(np.stack(values), axis=0)


def two_level_bootstrap(statistic: RunStatistic, n_images: dict[str, list[int]], n_boot: int, seed: int,
                        paired: bool, loop: Callable[[range], Iterable[int]] = iter
                        ) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]], dict[str, np.ndarray]]:
    """``(point, per_run, replicates)`` per net: the pooled statistic on all runs and images, each run's statistic
    on all its images, and the pooled statistic on ``n_boot`` two-level resamples, (n_boot, m).  ``statistic(net,
    run, idx)`` is a run's statistic vector on its images ``idx``; ``n_images`` maps each net (in draw order) to
    the number of images of each of its runs.  The draws are those of the module docstring."""
    if any(not sizes for sizes in n_images.values()):
        raise ValueError(f"bootstrap needs at least one run per net, got {n_images}")
    if any(n <= 0 for sizes in n_images.values() for n in sizes):
        raise ValueError("bootstrap needs at least one image per run")
    if paired and len({n for sizes in n_images.values() for n in sizes}) != 1:
        raise ValueError(f"a paired bootstrap needs as many images in every run, got {n_images}")
    rng = np.random.default_rng(seed)
    per_run = {net: [np.asarray(statistic(net, r, np.arange(n)), dtype=np.float64) for r, n in enumerate(sizes)]
               for net, sizes in n_images.items()}
    point = {net: pooled(values) for net, values in per_run.items()}
    reps = {net: np.empty((n_boot, point[net].size), dtype=np.float64) for net in n_images}

    def drawn_runs(R: int) -> np.ndarray:
        return rng.integers(0, R, size=R) if R > 1 else np.zeros(1, dtype=np.int64)

    n = next(iter(n_images.values()))[0]  # paired: every run's image count
    for b in loop(range(n_boot)):
        if paired:
            idx = rng.integers(0, n, size=n)
            for net, runs in {net: drawn_runs(len(sizes)) for net, sizes in n_images.items()}.items():
                cache = {int(r): np.asarray(statistic(net, int(r), idx), dtype=np.float64)
                         for r in set(runs.tolist())}
                reps[net][b] = pooled([cache[int(r)] for r in runs])
        else:
            for net, sizes in n_images.items():
                values = []
                for r in drawn_runs(len(sizes)).tolist():
                    idx = rng.integers(0, sizes[r], size=sizes[r])
                    values.append(np.asarray(statistic(net, int(r), idx), dtype=np.float64))
                reps[net][b] = pooled(values)
    return point, per_run, reps


def percentile_interval(replicates: np.ndarray,
                        level: float = MetricsConfig.level) -> tuple[np.ndarray, np.ndarray]:
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


def mean_interval(values: np.ndarray, n_boot: int, seed: int,
                  level: float = MetricsConfig.level) -> tuple[float, float, float]:
    """Mean of ``values`` with its bootstrap interval (a convenience for one sample)."""
    values = np.asarray(values, dtype=np.float64)
    point, reps = bootstrap(lambda idx, _: values[idx].mean(keepdims=True), len(values), len(values), n_boot, seed)
    lo, hi = percentile_interval(reps, level)
    return float(point[0]), float(lo[0]), float(hi[0])
