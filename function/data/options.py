"""Command-line flags of the foreground rule (docs/method.md §2), shared by the sigma and the metrics stage; no torch here,
so that ``--help`` stays fast.  The rule itself is :class:`kdq.function.data.masks.Foreground`."""
from __future__ import annotations

from kdq.function.checks import Interval
from kdq.function.config import option

FOREGROUNDS = ("auto", "masks", "central")
MISSING_MASK = ("auto", "error", "central")
# --mask-pad F: the mask is placed in a zero array F times its size (F² times its pixels, as float64) before it is
# resized; at F = 10 it covers a tenth of the side, under two cells of the 16-cell grid: more leaves nothing to compare
MAX_MASK_PAD = 10.0
MASK_PAD = Interval(1, MAX_MASK_PAD, wording=f"a number in 1..{MAX_MASK_PAD:g} (the padded mask is that many times "
                                             "the mask)")


def foreground_options(group: str, recorded: bool = False) -> dict:
    """The config fields ``foreground``, ``missing_mask``, ``exact_masks``, ``mask_pad`` (by name).  ``recorded``:
    the defaults are what the sigma run recorded (the metrics stage), else what the dataset's kind implies."""
    auto = "what the sigma run recorded, else " if recorded else ""
    return {
        "foreground": option("auto", "foreground cells: the dataset's masks, or the central square (rows and columns "
                                     f"int(g/6)..int(5g/6)) for every image; auto = {auto}central for ILSVRC data (as "
                                     "the original), masks otherwise", group, choices=FOREGROUNDS),
        "missing_mask": option("auto", "an image without a mask (with --foreground masks): error, or the central "
                                       f"square; auto = {auto}central for ILSVRC data (images without a box), error "
                                       "otherwise", group, choices=MISSING_MASK),
        "exact_masks": option(False, "cells from the thresholded mask by nearest sampling (exact); default: the "
                                     "original's bilinear resize of the grey mask to S×S, then nearest to g×g and > 0, "
                                     "which widens a mask by a fraction of a cell (bench/mask_cells.py)"
                                     + (" (or what the sigma run recorded)" if recorded else ""), group,
                              action="store_true"),
        "mask_pad": option(None if recorded else 1.0, "place each mask in the middle of a zero array F times its size "
                                                      "first: 1.2 reads the original code's VOC layout (box-sized "
                                                      "masks of crops enlarged 1.2×)"
                           + ("; default: what the sigma run recorded, else 1" if recorded else ""), group,
                           check=MASK_PAD, metavar="F"),
    }
