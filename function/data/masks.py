"""Foreground masks at the resolution of the σ grid (docs/method.md §2).

:func:`mask_to_grid` makes the ``g×g`` foreground cells of a mask as the original code does: the grey mask image
is resized to ``S×S`` with PIL's bilinear filter (what ``transforms.Resize((S, S))`` does to a PIL image), then
taken to ``g×g`` by nearest-neighbour sampling (``F.interpolate(..., mode='nearest')``), and a cell is
foreground when its value is > 0.  The bilinear step widens a mask by about one cell's edge; ``exact=True``
thresholds first (``> 0``) and samples nearest twice, so a cell is foreground exactly when the pixel it samples is.

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


def mask_to_grid(values: np.ndarray, size: int, grid: int, exact: bool = False, pad: float = 1.0) -> np.ndarray:
    """``(g, g)`` bool foreground cells of a ``(H, W)`` mask: grey values (uint8, > 0 is foreground; what
    ``Image.convert("L")`` gives) or a bool array (read as 0/255)."""
    values = np.asarray(values)
    if values.dtype == bool:
        values = values.astype(np.uint8) * 255
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
    ilsvrc = kind == "ilsvrc"
    if source == "auto":
        source = "central" if ilsvrc else "masks"
    if missing == "auto":
        missing = "central" if ilsvrc else "error"
    return Foreground(source, missing, exact, pad)
