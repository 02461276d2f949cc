"""Do the σ maps of a sigma run separate foreground from background?  (prints figures)

    python bench/sigma_fg_bg.py --sigma runs/sigma/teacher_conv --data data/embedded --split train

For every image of the run (effective and non-effective: run the stage with ``--effective-rule off`` to
see all drawn images before the filter) and every checkpoint, from the entropy map
``H_i = log σ*_i + ½ log 2πe``: the fraction of images whose mean background entropy exceeds their mean
foreground entropy, and the fg/bg AUC over cells (the probability that a background cell has a higher
entropy than a foreground cell), pooled over all cells of all images and as the mean of per-image AUCs.
0.5 means no separation.  Images with a failed fit (σ* ≤ 0) at a checkpoint are left out there.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from kdq.function.cli import Parser, UserError, existing_dir, run
from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.masks import central_square, mask_to_grid
from kdq.function.sigma.entropy import entropy_map
from kdq.function.sigma.layout import EFFECT_LIST, FULL_LIST, NON_EFFECT_LIST, image_folder, read_names, run_epochs


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sigma", type=Path, nargs="+", required=True, help="sigma run folder(s)")
    p.add_argument("--data", type=Path, required=True, help="dataset root of the run")
    p.add_argument("--split", default="train")
    p.add_argument("--input-size", type=int, default=None, help="S (default: from the run's run.json)")
    p.add_argument("--foreground", choices=("masks", "central"), default="masks")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--shuffle-masks", action="store_true",
                   help="control: pair each map with another image's mask (expect AUC ≈ 0.5 at every epoch)")
    return p


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + ½ P(pos = neg) (Mann–Whitney U / (|pos|·|neg|)); NaN when either is empty."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    x = np.concatenate([pos, neg])
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    dense = np.cumsum(first)
    bounds = np.r_[np.nonzero(first)[0], len(xs)]
    ranks_sorted = 0.5 * (bounds[dense - 1] + 1 + bounds[dense])  # average 1-based rank of each tie group
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def analyse(run_dir: Path, data: Path, split: str, size: int | None, foreground: str,
            shuffle: bool = False) -> dict:
    existing_dir("--sigma", run_dir)
    record = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    size = size or record.get("input_size")
    if not size:
        raise UserError(f"--input-size is needed: {run_dir} records none")
    epochs = run_epochs(run_dir)
    full = read_names(run_dir / FULL_LIST)
    names = read_names(run_dir / EFFECT_LIST) + read_names(run_dir / NON_EFFECT_LIST)
    ds = MaskedImageFolder(data, split)
    per_ckpt: dict[int, dict[str, list]] = {}
    mask_of = dict(zip(names, names[1:] + names[:1])) if shuffle else {n: n for n in names}
    for name in names:
        i = full.index(name)
        folder = image_folder(run_dir, i, True)
        if not folder.is_dir():
            folder = image_folder(run_dir, i, False)
        best = np.load(folder / "npy_files" / "best_sigma_entropy.npy", allow_pickle=False)[:, 0]
        g = best.shape[-1]
        fg = (central_square(g) if foreground == "central"
              else mask_to_grid(ds.mask(ds.index_of(mask_of[name])), size, g))
        for k, sigma in enumerate(best):
            if not (sigma > 0).all() or fg.all() or not fg.any():
                continue
            h = entropy_map(sigma)
            slot = per_ckpt.setdefault(k, {"gap": [], "auc": [], "fg": [], "bg": []})
            slot["gap"].append(h[~fg].mean() - h[fg].mean())
            slot["auc"].append(auc(h[~fg], h[fg]))
            slot["fg"].append(h[fg])
            slot["bg"].append(h[~fg])
    out = {}
    for k in sorted(per_ckpt):
        s = per_ckpt[k]
        epoch = epochs[k] if epochs and k < len(epochs) else k
        out[epoch] = {"images": len(s["gap"]), "frac_bg_above_fg": float(np.mean(np.array(s["gap"]) > 0)),
                      "auc_pooled": auc(np.concatenate(s["bg"]), np.concatenate(s["fg"])),
                      "auc_mean_per_image": float(np.nanmean(s["auc"])),
                      "mean_gap": float(np.mean(s["gap"]))}
    return {"run": str(run_dir), "layer": record.get("settings", {}).get("layer"), "checkpoints": out}


def main(args: argparse.Namespace) -> None:
    results = []
    for run_dir in args.sigma:
        res = analyse(run_dir, args.data, args.split, args.input_size, args.foreground, args.shuffle_masks)
        results.append(res)
        print(f"{res['run']} (layer {res['layer']}){' with shuffled masks (control)' if args.shuffle_masks else ''}:")
        print("  epoch  images  frac(bg H > fg H)  AUC pooled  AUC mean/image  mean gap")
        for epoch, r in res["checkpoints"].items():
            print(f"  {epoch:>5}  {r['images']:>6}  {r['frac_bg_above_fg']:>17.3f}  {r['auc_pooled']:>10.3f}  "
                  f"{r['auc_mean_per_image']:>14.3f}  {r['mean_gap']:>8.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
