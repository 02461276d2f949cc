"""Foreground masks at sigma-grid resolution (SPEC §2)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def mask_to_grid(mask: np.ndarray, size: int, grid: int) -> np.ndarray:
    """(H, W) mask (>0 is foreground) → resized to size×size, then nearest-downsampled to grid×grid bool."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    t = F.interpolate(t, size=(size, size), mode="nearest")
    t = F.interpolate(t, size=(grid, grid), mode="nearest")
    return (t[0, 0] > 0).numpy()


def central_square(grid: int) -> np.ndarray:
    """Fallback foreground without any annotation: cells [g/6, 5g/6) on both axes (SPEC §2, ILSVRC)."""
    lo, hi = int(round(grid / 6)), int(round(5 * grid / 6))
    m = np.zeros((grid, grid), dtype=bool)
    m[lo:hi, lo:hi] = True
    return m
