"""How much wider does the original's bilinear mask rule make a mask than exact nearest sampling?  (prints figures)

    python bench/mask_cells.py                                   # synthetic 500×375 masks, S = 224, g = 16
    python bench/mask_cells.py --data data/validate --split train --size 64   # a dataset's mask PNGs

Both rules are kdq's own :func:`kdq.function.data.masks.mask_to_grid`: the default (the original's rule: PIL
bilinear resize of the grey mask to S×S, nearest to g×g, a cell is foreground when its value is > 0) and
``exact=True`` (``--exact-masks``: threshold first, nearest twice, so a cell is foreground exactly when the mask
pixel it samples is).  Per mask it counts the foreground cells of both, the cells only the bilinear rule adds
and those it drops, and compares the added cells with the *ring* (the background cells 8-adjacent to the exact
foreground): a rule one cell wider would add the whole ring, ratio 1.  It also gives the widening at S×S (the
bilinear image > 0 versus the thresholded nearest one), in S pixels per boundary pixel, and as a reference the
cells whose area is at least half foreground.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from kdq.function.cli import Parser, UserError, existing_dir, run
from kdq.function.data.files import mask_values
from kdq.function.data.masks import mask_to_grid
from kdq.function.data.synthetic import shape_mask
from kdq.function.sigma.config import SigmaConfig

SHAPES = ("disk", "square", "triangle", "hexagon", "cross", "star", "bar")


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None,
                   help="dataset root whose seg/<split>/**/*.png masks to read (default: synthetic masks)")
    p.add_argument("--split", default="train", help="split of --data")
    p.add_argument("--size", type=int, default=224, help="S, the input size the mask is resized to")
    p.add_argument("--grid", type=int, default=SigmaConfig.grid, help="g, the σ grid")
    p.add_argument("--masks", type=int, default=500, help="number of synthetic masks")
    p.add_argument("--mask-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"),
                   help="size of the synthetic masks (CUB's typical 375×500)")
    p.add_argument("--seed", type=int, default=0)
    return p


def synthetic_masks(n: int, height: int, width: int, seed: int):
    """``n`` random shapes (kdq's synthetic shapes), each a uint8 0/255 mask of ``height × width``."""
    rng = np.random.default_rng(seed)
    side = max(height, width)
    for _ in range(n):
        radius = rng.uniform(0.12, 0.4) * min(height, width)
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        m = shape_mask(str(rng.choice(SHAPES)), side, cx, cy, radius, rng.uniform(0, np.pi))
        yield m[:height, :width].astype(np.uint8) * 255


def dataset_masks(root: Path, split: str):
    """The grey values of every mask PNG under ``root/seg/split``."""
    files = sorted((root / "seg" / split).rglob("*.png"))
    if not files:
        raise UserError(f"--data: no mask PNG under {root / 'seg' / split}")
    for f in files:
        with Image.open(f) as img:
            yield mask_values(img, f)


def ring(cells: np.ndarray) -> np.ndarray:
    """The cells outside ``cells`` that touch it (8-neighbourhood)."""
    padded = np.pad(cells, 1)
    grown = np.zeros_like(cells)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            grown |= padded[dy:dy + cells.shape[0], dx:dx + cells.shape[1]]
    return grown & ~cells


def majority_cells(values: np.ndarray, grid: int) -> np.ndarray:
    """Cells whose area of the mask is at least half foreground (a reference, not a rule of the method)."""
    fg = values > 0
    rows = np.linspace(0, fg.shape[0], grid + 1).round().astype(int)
    cols = np.linspace(0, fg.shape[1], grid + 1).round().astype(int)
    return np.array([[fg[rows[i]:rows[i + 1], cols[j]:cols[j + 1]].mean() >= 0.5 for j in range(grid)]
                     for i in range(grid)])


def widening_pixels(values: np.ndarray, size: int) -> tuple[int, int]:
    """(pixels > 0 only in the bilinear S×S image, boundary pixels of the thresholded nearest S×S image)."""
    # the grid = S case of mask_to_grid is the S×S image itself
    bilinear = mask_to_grid(values, size, size)
    nearest = mask_to_grid(values, size, size, exact=True)
    return int((bilinear & ~nearest).sum()), int(ring(nearest).sum())


def measure(masks, size: int, grid: int) -> dict[str, float]:
    """The figures ``main`` prints, over the grey-value masks ``masks`` (means per mask unless named otherwise)."""
    rows = []
    for values in masks:
        bil = mask_to_grid(values, size, grid)
        exact = mask_to_grid(values, size, grid, exact=True)
        added, dropped, around = bil & ~exact, exact & ~bil, ring(exact)
        px_added, px_ring = widening_pixels(values, size)
        rows.append((exact.sum(), bil.sum(), majority_cells(values, grid).sum(), added.sum(), dropped.sum(),
                     around.sum(), (added & ~around).sum(), px_added, px_ring, bil.all()))
    a = np.array(rows, dtype=np.float64)
    if not len(a):
        raise UserError("no masks to measure")
    return {"masks": len(a), "fg_exact": a[:, 0].mean(), "fg_bilinear": a[:, 1].mean(), "fg_majority": a[:, 2].mean(),
            "added": a[:, 3].mean(), "added_max": a[:, 3].max(), "masks_with_added": (a[:, 3] > 0).mean(),
            "dropped": a[:, 4].mean(), "ring": a[:, 5].mean(), "added_per_ring": a[:, 3].sum() / max(a[:, 5].sum(), 1),
            "added_beyond_ring": a[:, 6].sum(), "px_per_boundary_px": a[:, 7].sum() / max(a[:, 8].sum(), 1),
            "no_background": int(a[:, 9].sum())}


def main(args: argparse.Namespace) -> None:
    if args.data is not None:
        existing_dir("--data", args.data)
        masks, what = dataset_masks(args.data, args.split), f"{args.data}/seg/{args.split}"
    else:
        h, w = args.mask_size
        masks, what = synthetic_masks(args.masks, h, w, args.seed), f"{args.masks} synthetic {h}×{w} masks"
    r = measure(masks, args.size, args.grid)
    print(f"{what}: {r['masks']} masks, S = {args.size}, g = {args.grid} ({args.size / args.grid:g} px per cell)")
    print(f"  foreground cells per mask: exact nearest {r['fg_exact']:.2f}, bilinear (the original's, kdq's "
          f"default) {r['fg_bilinear']:.2f}, area ≥ ½ (reference) {r['fg_majority']:.2f}")
    print(f"  cells the bilinear rule adds: {r['added']:.2f} per mask (max {r['added_max']:.0f}; "
          f"{r['masks_with_added']:.0%} of masks gain any), drops: {r['dropped']:.2f}")
    print(f"  the ring one cell wider holds {r['ring']:.2f} cells per mask; added / ring = "
          f"{r['added_per_ring']:.3f}; added cells outside the ring: {r['added_beyond_ring']:.0f}")
    print(f"  at S×S the bilinear image > 0 is {r['px_per_boundary_px']:.2f} px wider per boundary pixel "
          f"(= {r['px_per_boundary_px'] / (args.size / args.grid):.3f} cell)")
    if r["no_background"]:
        print(f"  {r['no_background']} mask(s) have no background cell under the bilinear rule")


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
