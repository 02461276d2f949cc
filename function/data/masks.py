"""Foreground masks at the resolution of the σ grid (docs/method.md §2).

:func:`mask_to_grid` makes the ``g×g`` foreground cells of a mask as the original code does: the grey mask image
is resized to ``S×S`` with PIL's bilinear filter (what ``transforms.Resize((S, S))`` does to a PIL image), then
taken to ``g×g`` by nearest-neighbour sampling (``F.interpolate(..., mode='nearest')``), and a cell is
foreground when its value is > 0.  A mask given as an array rather than a PNG (the Python API) is first taken to
the grey values a PNG would hold by :func:`grey_values` — bool as 0/255, floats in [0, 1] scaled to 0..255 with
every value > 0 kept ≥ 1, other integers as labels — so a pixel is foreground when its value is > 0 whatever
the dtype.  The bilinear step widens a mask by a fraction of a cell (bench/mask_cells.py: about 0.05 cell
for 375×500 masks at S = 224, g = 16); ``exact=True`` thresholds first (``> 0``)
and samples nearest twice, so a cell is foreground exactly when the pixel it samples is.

``pad`` reads masks of the original code's VOC layout, whose masks are the object's box while its images are
the box enlarged 1.2×: the mask is first placed in the middle of a zero array ``pad`` times its size.

:func:`central_square` is the foreground of the original's ILSVRC analysis: rows and columns ``int(g/6)`` to
``int(5g/6)``, both included (g = 16: cells 2..13).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kdq.function.checks import CheckError, check_in
from kdq.function.data.options import MASK_PAD


def grey_values(mask, name: str = "mask") -> np.ndarray:
    """A ``(H, W)`` mask of any dtype as the uint8 grey values of a mask PNG, > 0 where the mask is > 0.

    The readings of the CLI's PNGs (:func:`kdq.function.data.files.mask_values`): bool as 0 / 255 (a 1-bit PNG);
    uint8 as is (a grey PNG's levels); other integers as labels, ``> 0`` → 255 (a palette PNG's indices; so a 0/1
    int mask is a bool one); floats as intensities in [0, 1]: ``round(255·v)``, but at least 1 where ``v > 0``, so
    1.0 is 255 (like True) and no positive value becomes 0 before the bilinear resize.  A CheckError names
    ``name`` for another number of dimensions, NaN or infinite values, or values outside those ranges; a TypeError
    for non-real values.  A torch tensor is read as its array.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu()
        mask = (mask.double() if mask.is_floating_point() else mask).numpy()
    values = np.asarray(mask)
    if values.ndim != 2:
        raise CheckError(f"{name} must be one 2-D (H, W) mask, got shape {values.shape}")
    if values.dtype == bool:
        return values.astype(np.uint8) * 255
    if values.dtype == np.uint8:
        return values
    if np.iscomplexobj(values) or not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"{name} must hold real numbers (bool, integers or floats), got {values.dtype}")
    if np.issubdtype(values.dtype, np.integer):
        if values.size and values.min() < 0:
            raise CheckError(f"{name}: an integer mask holds labels ≥ 0 (> 0 is foreground), got {values.min()}")
        return (values > 0).astype(np.uint8) * 255
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise CheckError(f"{name} holds NaN or infinite values")
    if values.size and (values.min() < 0 or values.max() > 1):
        raise CheckError(f"{name}: a float mask holds intensities in [0, 1] (> 0 is foreground), got values "
                         f"{values.min():g}..{values.max():g}; divide grey levels by 255")
    grey = np.rint(values * 255)
    return np.where(values > 0, np.maximum(grey, 1), 0).astype(np.uint8)


def mask_to_grid(values: np.ndarray, size: int, grid: int, exact: bool = False, pad: float = 1.0) -> np.ndarray:
    """``(g, g)`` bool foreground cells of a ``(H, W)`` mask of any dtype, first taken to its grey values by
    :func:`grey_values` (uint8 grey values, what a mask PNG holds, are used as they are)."""
    values = grey_values(values)
    if exact:
        fg = _padded(values > 0, pad).astype(np.float32)
        t = F.interpolate(torch.from_numpy(fg)[None, None], size=(size, size), mode="nearest")
    else:
        if pad != 1.0:  # the original pads into a float64 array: PIL resizes it as a float ("F") image
            image = Image.fromarray(_padded(values.astype(np.float64), pad))
        else:
            image = Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), mode="L")
        resized = np.array(image.resize((size, size), Image.BILINEAR), dtype=np.float32)
        t = torch.from_numpy(np.ascontiguousarray(resized))[None, None]
    t = F.interpolate(t, size=(grid, grid), mode="nearest")
    return (t[0, 0] > 0).numpy()


def _padded(values: np.ndarray, pad: float) -> np.ndarray:
    """``values`` in the middle of a zero array of ``int(h·pad) × int(w·pad)`` (the original's arithmetic)."""
    if pad == 1.0:
        return values
    h, w = values.shape
    out = np.zeros((int(h * pad), int(w * pad)), dtype=values.dtype)
    a, b = int((out.shape[0] - h) / 2), int((out.shape[1] - w) / 2)
    out[a:a + h, b:b + w] = values
    return out


def central_square(grid: int) -> np.ndarray:
    """The foreground without an annotation: rows and columns ``int(g/6) .. int(5g/6)``, both included."""
    lo, hi = grid // 6, (5 * grid) // 6 + 1
    m = np.zeros((grid, grid), dtype=bool)
    m[lo:hi, lo:hi] = True
    return m


@dataclass(frozen=True)
class Foreground:
    """Where an image's foreground cells come from (docs/method.md §2): its mask (``masks``) or the central square for
    every image (``central``); ``missing`` says what an image without a mask gets (``error`` or ``central``)."""
    source: str = "masks"
    missing: str = "error"
    exact: bool = False
    pad: float = 1.0

    def cells(self, values: np.ndarray | None, size: int, grid: int) -> tuple[np.ndarray, bool]:
        """``(g, g)`` foreground cells of one image (``values``: its mask's grey values, None without a mask)
        and whether the central square stood in for a missing mask; a ValueError when a mask is missing and
        ``missing`` is ``error``."""
        if self.source == "central":
            return central_square(grid), False
        if values is None:
            if self.missing != "central":
                raise ValueError("missing mask")
            return central_square(grid), True
        return mask_to_grid(values, size, grid, exact=self.exact, pad=self.pad), False

    def describe(self) -> dict:
        return {"foreground": self.source, "missing_mask": self.missing, "exact_masks": self.exact,
                "mask_pad": self.pad}


def resolve_foreground(source: str, missing: str, kind: str | None, exact: bool = False,
                       pad: float = 1.0) -> Foreground:
    """The flags ``--foreground`` and ``--missing-mask`` with ``auto`` resolved by the dataset's kind, as the
    original code: ILSVRC data get the central square for every image (and, with ``masks``, for the images
    without a box), every other dataset its masks."""
    check_in("--mask-pad", pad, MASK_PAD)  # also a value read from a run.json
    ilsvrc = kind == "ilsvrc"
    if source == "auto":
        source = "central" if ilsvrc else "masks"
    if missing == "auto":
        missing = "central" if ilsvrc else "error"
    return Foreground(source, missing, exact, pad)
