"""The metrics stage's figures (PNG, matplotlib's object API with the Agg canvas: no pyplot state).

1. :func:`entropy_maps` — entropy maps of a few images over the checkpoints, label net above distil net,
   over the image with its mask contour, one colour scale.
2. :func:`concept_curves` — N_fg and N_bg against epoch for both nets, mean with interval band.
3. :func:`weight_distance` — cumulative weight distance against epoch with m̂ marked.
4. :func:`metric_panels` — the six metrics side by side with their intervals.

Each returns the PNG bytes; the caller writes them (atomically).
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from kdq.function.sigma.grid import upsample as upsample_cells

COLORS = {"label": "#1f77b4", "distil": "#d62728"}
NAMES = {"label": "label net", "distil": "distil net"}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def pick_columns(k: int, max_cols: int) -> list[int]:
    """Up to ``max_cols`` checkpoint indices, evenly spread, always the first and the last."""
    if k <= max_cols:
        return list(range(k))
    return sorted({int(round(x)) for x in np.linspace(0, k - 1, max_cols)})


def entropy_maps(images: list[tuple[str, np.ndarray, np.ndarray]], H_label: np.ndarray, H_distil: np.ndarray,
                 epochs: dict[str, list[int]], title: str, max_cols: int = 8,
                 concepts: dict[str, np.ndarray | None] | None = None) -> bytes:
    """``images``: (name, RGB uint8 (S, S, 3), mask bool (S, S)); ``H_*`` (n, K, g, g) of those images;
    ``epochs[net]`` the net's checkpoint epochs (the nets may have different schedules); ``concepts[net]``
    (n, K, g, g) bool, the visual concepts, marked with a dot on their cells."""
    concepts = concepts or {}
    cols = {net: pick_columns(len(epochs[net]), max_cols) for net in ("label", "distil")}
    same = epochs["label"] == epochs["distil"]
    n = len(images)
    shown = np.concatenate([H_label[:, cols["label"]].ravel(), H_distil[:, cols["distil"]].ravel()])
    vmin, vmax = float(np.min(shown)), float(np.max(shown))
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    norm = Normalize(vmin, vmax)
    cmap = colormaps["viridis"]
    # a fixed layout (constrained layout costs seconds with this many panels)
    panel, ncol, nrow = 1.45, max(len(c) for c in cols.values()) + 1, 2 * n
    width, height = panel * ncol + 1.9, panel * nrow + 0.9
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.75 / width, right=1 - 1.15 / width, bottom=0.1 / height, top=1 - 0.75 / height,
                        wspace=0.06, hspace=0.06)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for r, (name, rgb, mask) in enumerate(images):
        S = rgb.shape[0]
        gray = rgb.astype(np.float64).mean(axis=2, keepdims=True) / 255.0
        for j, (net, H) in enumerate((("label", H_label), ("distil", H_distil))):
            row = axes[2 * r + j]
            row[0].imshow(rgb, interpolation="nearest")
            _contour(row[0], mask, 1.4)
            row[0].set_ylabel(f"{NAMES[net]}\n{_wrapped(name)}", fontsize=7, color=COLORS[net])
            for c, k in enumerate(cols[net]):
                ax = row[c + 1]
                # the map upsampled (nearest) to the image, blended over its grey levels: one raster per panel
                up = upsample_cells(H[r, k], S)
                ax.imshow(0.8 * cmap(norm(up))[..., :3] + 0.2 * gray, interpolation="nearest")
                _contour(ax, mask, 1.0)
                if concepts.get(net) is not None:
                    _mark_cells(ax, concepts[net][r, k], S)
                if r == 0 and (j == 0 or not same):
                    ax.set_title(f"epoch {epochs[net][k]}", fontsize=9 if same else 7)
            for c in range(len(cols[net]) + 1, ncol):
                row[c].set_axis_off()
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("image + mask", fontsize=9)
    cax = fig.add_axes((1 - 0.95 / width, 0.15, 0.18 / width, 0.7))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.set_label("entropy H = log σ* + ½ log 2πe  (low = kept; dots: visual concepts)")
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / height, va="top")
    return _png(fig)


def _contour(ax, mask: np.ndarray, width: float) -> None:
    """The mask's outline in image coordinates (pixel centres), when it has both classes."""
    if mask.any() and not mask.all():
        c = np.arange(mask.shape[0]) + 0.5
        ax.contour(c, c, mask.astype(float), levels=[0.5], colors="yellow", linewidths=width)


def _wrapped(name: str, width: int = 22) -> str:
    """The whole name, broken after each ``/`` and then every ``width`` characters (never cut off)."""
    lines = []
    for part in name.replace("/", "/\n").split("\n"):
        lines += [part[i:i + width] for i in range(0, len(part), width)] or [""]
    return "\n".join(lines)


def _mark_cells(ax, cells: np.ndarray, size: int) -> None:
    """A dot at the centre of every true cell of a (g, g) map shown at ``size`` pixels."""
    rows, cols = np.nonzero(cells)
    if rows.size:
        step = size / cells.shape[0]
        ax.scatter((cols + 0.5) * step - 0.5, (rows + 0.5) * step - 0.5, s=6, c="red", marker="o",
                   linewidths=0)


def concept_curves(epochs: dict[str, list[int]], curves: dict, level: float, title: str) -> bytes:
    """``curves[net]`` holds ``n_fg_mean``, ``n_fg_ci`` ([lo], [hi]), ``n_bg_mean``, ``n_bg_ci`` over the net's
    checkpoints ``epochs[net]``."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, what in ((axes[0], "n_fg", "foreground concepts N_fg"), (axes[1], "n_bg", "background concepts N_bg")):
        for net in ("label", "distil"):
            x = np.asarray(epochs[net])
            mean = np.asarray(curves[net][f"{key}_mean"])
            lo, hi = (np.asarray(v) for v in curves[net][f"{key}_ci"])
            ax.plot(x, mean, marker="o", ms=3, color=COLORS[net], label=f"{NAMES[net]} (mean)")
            ax.fill_between(x, lo, hi, color=COLORS[net], alpha=0.2, label=f"{NAMES[net]} {level:.0%} interval")
        ax.set_title(what)
        ax.set_xlabel("epoch of the checkpoint")
        ax.set_ylabel("concept cells per image")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def weight_distance(curves: dict[str, tuple[np.ndarray, np.ndarray]], peaks: dict[str, np.ndarray],
                    D_mean: dict[str, float], title: str) -> bytes:
    """``curves[net]`` = (epochs, D at those epochs): the cumulative distance, every epoch or the checkpoints;
    ``peaks[net]`` the epoch of m̂ of each image (one of the curve's epochs)."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for net, marker in (("label", "o"), ("distil", "s")):
        x, D = (np.asarray(v) for v in curves[net])
        at = dict(zip(x.tolist(), D.tolist()))
        ax.plot(x, D, color=COLORS[net], label=f"{NAMES[net]}: D(e)")
        e, count = np.unique(np.asarray(peaks[net]), return_counts=True)
        total = max(count.sum(), 1)
        y = [at[int(ei)] for ei in e]
        ax.scatter(e, y, s=30 + 400 * count / total, marker=marker, facecolor="none", edgecolor=COLORS[net],
                   linewidths=1.5, zorder=3, label=f"{NAMES[net]}: m̂ (area ∝ images)")
        for ei, yi, ci in zip(e, y, count):
            ax.annotate(str(ci), (ei, yi), textcoords="offset points", xytext=(6, -10 if net == "label" else 6),
                        fontsize=7, color=COLORS[net])
        ax.axhline(D_mean[net], color=COLORS[net], ls="--", lw=1, label=f"{NAMES[net]}: D_mean = {D_mean[net]:.3g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cumulative weight distance D(e)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=11)
    return _png(fig)


def metric_panels(rows: list[dict], labels: dict[str, str], level: float, title: str) -> bytes:
    """One panel per metric row (``metric label distil label_ci distil_ci difference difference_ci
    predicted verdict``): both nets with their intervals; the panel title gives the difference and the verdict
    (green only when the interval supports the prediction)."""
    fig = Figure(figsize=(2.3 * len(rows), 3.8), layout="constrained")
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, row in zip(axes, rows):
        for x, net in enumerate(("label", "distil")):
            v = row[net]
            lo, hi = row[f"{net}_ci"]
            ax.errorbar([x], [v], yerr=[[max(v - lo, 0)], [max(hi - v, 0)]], fmt="o", color=COLORS[net],
                        capsize=5, ms=7)
        ax.set_xticks([0, 1], ["label", "distil"])
        ax.set_xlim(-0.6, 1.6)
        lo, hi = row["difference_ci"]
        arrow = {"distil > label": "↑", "distil < label": "↓"}.get(row["predicted"], "")
        verdict = "no verdict" if row.get("no_verdict") else (row.get("verdict") or "")
        ax.set_title(f"{labels[row['metric']]}  (predicted {arrow})\nΔ={row['difference']:.3g} "
                     f"[{lo:.3g}, {hi:.3g}]\n{verdict}", fontsize=9,
                     color={"supported": "darkgreen", "same sign, not significant": "dimgray",
                            "no verdict": "dimgray"}.get(verdict, "black" if not verdict else "darkred"))
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel(f"value ({level:.0%} bootstrap interval)")
    fig.suptitle(title, fontsize=11)
    return _png(fig)
