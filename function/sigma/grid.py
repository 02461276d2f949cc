"""The σ grid: ``g×g`` cells over an ``S×S`` input.  :func:`upsample` spreads cell values to pixels (the noise
of the fit, docs/method.md §2, and the entropy maps of the figures).  A cell covers ``S/g`` pixels; when ``g`` does not
divide ``S`` (AlexNet's 227 px with g = 16) the cells are uneven, as the original code's
``F.interpolate(..., mode='nearest')`` makes them: pixel ``p`` belongs to cell ``floor(p·g/S)``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def upsample(cells, size: int):
    """Nearest upsampling of ``(..., g, g)`` maps to ``(..., size, size)`` (a tensor for a tensor, an array of
    the same dtype for an array)."""
    if isinstance(cells, np.ndarray):
        dtype = cells.dtype
        out = upsample(torch.from_numpy(np.ascontiguousarray(cells, dtype=np.float64)), size).numpy()
        return out.astype(dtype)
    g = cells.shape[-1]
    lead = cells.shape[:-2]
    if size % g == 0:
        k = size // g
        s = cells.reshape(*lead, g, 1, g, 1).expand(*lead, g, k, g, k)
        return s.reshape(*lead, size, size)
    flat = cells.reshape(-1, 1, g, g)
    return F.interpolate(flat, size=(size, size), mode="nearest").reshape(*lead, size, size)
