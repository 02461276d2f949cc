"""The entropy of the noise: ``H = log σ + ½·log(2πe)``, the differential entropy of a Gaussian with std σ.

One cell of the σ grid has entropy :func:`entropy_map`; a map's mean entropy H̄ is :func:`mean_entropy`.
The fit (docs/method.md §2), the effective-sample rule and the metrics (docs/method.md §3) all read entropies from here.
"""
from __future__ import annotations

import math

import numpy as np
import torch

HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)  # ½·log(2πe) ≈ 1.4189


def entropy_map(sigma):
    """Per-cell entropy ``log σ + ½ log(2πe)`` (a tensor for a tensor; float64 for an array or a number)."""
    if isinstance(sigma, torch.Tensor):
        return torch.log(sigma) + HALF_LOG_2PIE
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(sigma, dtype=np.float64)) + HALF_LOG_2PIE


def mean_entropy(sigma: torch.Tensor) -> torch.Tensor:
    """H̄ of each map: the mean of :func:`entropy_map` over the last two (cell) dimensions."""
    return entropy_map(sigma).mean(dim=(-2, -1))
