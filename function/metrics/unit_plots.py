"""Figures of the entropy per unit for the modalities that are not images (PNG, matplotlib's object API with the
Agg canvas, as :mod:`kdq.function.metrics.plots`).

1. :func:`token_entropy_figure` — the tokens of a few sentences as boxes coloured by their entropy, one row per
   (net, checkpoint), the foreground (class) words in bold and underlined.
2. :func:`point_entropy_figure` — a few point clouds in 3-D, coloured by their entropy at the first and the last
   checkpoint, from a few viewpoints; the points of the class-defining shape are filled circles, the others crosses.

H = log σ* + ½ log 2πe is low where the layer keeps the unit's information: the colour scale (viridis, one per
figure) is dark there.  A NaN entropy (padding beyond a sentence's length, a padded point) is not drawn.  Each
function returns the PNG bytes, the same bytes for the same input (no date and no software version in the file).
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the "3d" projection)

from kdq.function.checks import CheckError, Interval, check_epochs, check_in
from kdq.function.metrics.plots import COLORS, NAMES, pick_columns

NETS = ("label", "distil")
CMAP = "viridis"
BAR_LABEL = "entropy H (low: kept)"
DPI = 110

# token boxes, in inches (the token axes is drawn in inch coordinates, so text widths are known in advance)
TOKEN_FONT = 8.5  # points, monospace: every character advances 0.602 em (DejaVu Sans Mono, regular and bold),
CHAR = math.ceil(0.602 * TOKEN_FONT * DPI / 72) / DPI  # which Agg rounds to whole pixels: inches per character
PAD, GAP = 0.6 * CHAR, 0.05  # inside a box on each side; between two boxes
LINE, BOX = 0.25, 0.2  # height of one line of boxes; height of a box
MAX_LINE = 11.0  # a sentence wider than this wraps onto more lines
MIN_BODY = 3.8  # room for the header's two lines
HEADER, BLOCK_GAP, NET_GAP, WRAP_GAP = 0.3, 0.18, 0.07, 0.1
LEFT, RIGHT, TOP, BOTTOM = 1.15, 1.25, 0.55, 0.15

# point clouds
PANEL = 2.5  # inches per 3-D panel
P_LEFT, P_RIGHT, P_TOP, P_BOTTOM = 0.45, 1.2, 0.75, 0.1


# ---- shared pieces ------------------------------------------------------------------------------------------
def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes, without the metadata that would change between matplotlib versions."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _checked_nets(entropies: dict, epochs: dict, n: int, units: str) -> dict[str, np.ndarray]:
    """``entropies`` as float arrays (n, K, U) of the nets it holds (label, distil: in that order), each with
    its ``epochs`` (K of them); a CheckError for anything else."""
    unknown = sorted(set(entropies) - set(NETS), key=str)
    if unknown:
        raise CheckError(f"entropies has unknown nets {unknown}: only {', '.join(NETS)}")
    nets = {}
    for net in (net for net in NETS if net in entropies):
        H = np.asarray(entropies[net], dtype=np.float64)
        if H.ndim != 3 or H.shape[0] != n or H.shape[1] == 0:
            raise CheckError(f"entropies[{net!r}] must have shape (N, K, {units}) with N = {n} and K ≥ 1, "
                             f"got {H.shape}")
        if net not in epochs:
            raise CheckError(f"epochs has no entry for the net {net!r}")
        if len(check_epochs(f"epochs[{net!r}]", epochs[net])) != H.shape[1]:
            raise CheckError(f"epochs[{net!r}] has {len(epochs[net])} epochs but entropies[{net!r}] has "
                             f"{H.shape[1]} checkpoints")
        nets[net] = H
    if not nets:
        raise CheckError(f"entropies must hold at least one of the nets {', '.join(NETS)}")
    return nets


def _checked_names(names: Sequence[str] | None, n: int, what: str) -> list[str]:
    """``names`` (one per input) or ``"<what> i"``."""
    if names is None:
        return [f"{what} {i}" for i in range(n)]
    if len(names) != n:
        raise CheckError(f"names has {len(names)} names for {n} {what}s")
    return [str(name) for name in names]


def _checked_mask(name: str, mask, shape: tuple) -> np.ndarray:
    """A boolean mask of ``shape`` (bools, or integers 0/1)."""
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise CheckError(f"{name} must have shape {shape}, got {mask.shape}")
    if mask.dtype != bool and not (np.issubdtype(mask.dtype, np.integer) and np.isin(mask, (0, 1)).all()):
        raise CheckError(f"{name} must be a boolean mask, got {mask.dtype}")
    return mask.astype(bool)


def _norm(values: list[np.ndarray]) -> Normalize:
    """One colour scale over the finite values shown (0..1 when none is)."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values])
    if finite.size == 0:
        return Normalize(0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    return Normalize(lo - 0.5, hi + 0.5) if lo == hi else Normalize(lo, hi)


def _plain(text: str) -> str:
    """Text shown as written: no mathtext (``$``), no line breaks."""
    return " ".join(text.split("\n")).replace("\t", " ").replace("$", r"\$")


def _colorbar(fig: Figure, norm: Normalize, rect: tuple) -> None:
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colormaps[CMAP]), cax=fig.add_axes(rect))
    bar.set_label(BAR_LABEL)


# ---- tokens -------------------------------------------------------------------------------------------------
def token_entropy_figure(tokens: list[list[str]], entropies: dict[str, np.ndarray], foreground: list[np.ndarray],
                         epochs: dict[str, list[int]], names: list[str] | None = None,
                         max_columns: int = 6) -> bytes:
    """``tokens[i]`` the tokens of sentence ``i``; ``entropies[net]`` (N, K, U) with U ≥ every sentence's length
    (NaN beyond it); ``foreground[i]`` (len(tokens[i]),) bool, the class words; ``epochs[net]`` the net's K
    checkpoint epochs.  One block per sentence, one row per (net, checkpoint) for up to ``max_columns``
    checkpoints (evenly spread, always the first and the last)."""
    if len(tokens) == 0:
        raise CheckError("tokens is empty: no sentence to draw")
    n = len(tokens)
    nets = _checked_nets(entropies, epochs, n, "U")
    check_in("max_columns", max_columns, Interval(lo=2, integer=True, wording="an integer ≥ 2"))
    if len(foreground) != n:
        raise CheckError(f"foreground has {len(foreground)} masks for {n} sentences")
    sentences = [[_plain(str(t)) for t in sentence] for sentence in tokens]
    masks = []
    for i, sentence in enumerate(sentences):
        if not sentence:
            raise CheckError(f"tokens[{i}] is empty: a sentence needs at least one token")
        for net, H in nets.items():
            if H.shape[2] < len(sentence):
                raise CheckError(f"entropies[{net!r}] has {H.shape[2]} units, fewer than the {len(sentence)} "
                                 f"tokens of sentence {i}")
        masks.append(_checked_mask(f"foreground[{i}]", foreground[i], (len(sentence),)))
    names = _checked_names(names, n, "sentence")
    rows = {net: pick_columns(H.shape[1], max_columns) for net, H in nets.items()}
    shown = [H[i, rows[net], :len(s)] for net, H in nets.items() for i, s in enumerate(sentences)]
    norm = _norm(shown)

    layouts = [_token_layout(s) for s in sentences]
    body_w = max(MIN_BODY, max(x1 for layout in layouts for _, _, x1 in layout))
    blocks = [_block_height(layout, rows) for layout in layouts]
    body_h = sum(blocks) + BLOCK_GAP * (n - 1)
    width, height = LEFT + body_w + RIGHT, TOP + body_h + BOTTOM
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((LEFT / width, BOTTOM / height, body_w / width, body_h / height))
    ax.set_xlim(0, body_w)
    ax.set_ylim(body_h, 0)  # inches from the top
    ax.set_axis_off()
    boxes, faces, edges, lines, line_colors = [], [], [], [], []
    y = 0.0
    for i in range(n):
        ax.text(0, y + HEADER / 2, _plain(names[i]), fontsize=9.5, fontweight="bold", va="center", ha="left")
        y += HEADER
        for j, (net, H) in enumerate(nets.items()):
            y += NET_GAP if j else 0.0
            for k in rows[net]:
                ax.text(-0.1, y + BOX / 2 + 0.02, f"{net} e={epochs[net][k]}", fontsize=8, color=COLORS[net],
                        va="center", ha="right", clip_on=False)
                _token_row(ax, sentences[i], layouts[i], H[i, k], masks[i], norm, y,
                           (boxes, faces, edges, lines, line_colors))
                y += _row_height(layouts[i])
        y += BLOCK_GAP
    ax.add_collection(PatchCollection(boxes, facecolors=faces, edgecolors=edges, linewidths=0.6))
    ax.add_collection(LineCollection(lines, colors=line_colors, linewidths=1.1))
    rows_of = ",  ".join(f"{net}: {NAMES[net]}" for net in nets)
    fig.text(0.1 / width, 1 - 0.08 / height, f"entropy per token over the checkpoints ({rows_of})\n"
             "bold underlined: foreground (class words);  grey outline: no value", fontsize=8.5, va="top",
             linespacing=1.4)
    bar_h = min(body_h, 4.0)
    _colorbar(fig, norm, (1 - 0.95 / width, 1 - (TOP + bar_h) / height, 0.16 / width, bar_h / height))
    return _png(fig)


def _token_layout(sentence: list[str]) -> list[tuple[int, float, float]]:
    """(line, x0, x1) of each token's box in inches, wrapping at :data:`MAX_LINE`; a token too long for a line is
    shortened when it is drawn (:func:`_fitted`)."""
    layout, line, x = [], 0, 0.0
    for token in sentence:
        w = min(len(token) * CHAR + 2 * PAD, MAX_LINE)
        if x > 0 and x + w > MAX_LINE:
            line, x = line + 1, 0.0
        layout.append((line, x, x + w))
        x += w + GAP
    return layout


def _lines(layout: list[tuple[int, float, float]]) -> int:
    return layout[-1][0] + 1


def _row_height(layout: list[tuple[int, float, float]]) -> float:
    """One (net, checkpoint) row of a sentence: its lines, and a gap after it when it wraps."""
    lines = _lines(layout)
    return lines * LINE + (WRAP_GAP if lines > 1 else 0.0)


def _block_height(layout: list[tuple[int, float, float]], rows: dict[str, list[int]]) -> float:
    """A sentence's block: its header, then one row per (net, checkpoint)."""
    n_rows = sum(len(r) for r in rows.values())
    return HEADER + n_rows * _row_height(layout) + NET_GAP * (len(rows) - 1)


def _fitted(token: str, width: float) -> str:
    """The token, cut with an ellipsis where it is wider than its box."""
    room = int((width - 2 * PAD) / CHAR + 1e-9)
    return token if len(token) <= room else token[:max(room - 1, 0)] + "…"


def _token_row(ax, sentence: list[str], layout, H: np.ndarray, mask: np.ndarray, norm: Normalize, top: float,
               out: tuple[list, list, list, list, list]) -> None:
    """One (net, checkpoint) row of a sentence: the boxes (collected in ``out`` to be drawn at once) and texts."""
    boxes, faces, edges, lines, line_colors = out
    cmap = colormaps[CMAP]
    for token, (line, x0, x1), h, fg in zip(sentence, layout, H, mask):
        y0 = top + line * LINE
        boxes.append(Rectangle((x0, y0), x1 - x0, BOX))
        if np.isfinite(h):
            face = cmap(norm(h))
            ink = "white" if 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2] < 0.5 else "black"
            faces.append(face)
            edges.append((1, 1, 1, 0))
        else:
            faces.append((1, 1, 1, 1))
            edges.append((0.55, 0.55, 0.55, 1))
            ink = "0.45"
        ax.text(x0 + PAD, y0 + BOX / 2, _fitted(token, x1 - x0), fontsize=TOKEN_FONT, family="DejaVu Sans Mono",
                fontweight="bold" if fg else "normal", color=ink, va="center_baseline", ha="left")
        if fg:
            lines.append(((x0 + PAD, y0 + BOX - 0.035), (x1 - PAD, y0 + BOX - 0.035)))
            line_colors.append(ink)


# ---- point clouds -------------------------------------------------------------------------------------------
def point_entropy_figure(points: np.ndarray, entropies: dict[str, np.ndarray], foreground: np.ndarray,
                         epochs: dict[str, list[int]], names: list[str] | None = None,
                         views: tuple = ((20, -60), (90, -90))) -> bytes:
    """``points`` (N, P, 3); ``entropies[net]`` (N, K, P), NaN for padded points; ``foreground`` (N, P) bool, the
    points of the class-defining shape; ``epochs[net]`` the net's K checkpoint epochs; ``views`` (elevation,
    azimuth) pairs in degrees.  Two rows per cloud (label net above distil net), one panel per (checkpoint,
    view) at the first and the last checkpoint."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[2] != 3:
        raise CheckError(f"points must have shape (N, P, 3), got {points.shape}")
    n, p = points.shape[:2]
    if n == 0 or p == 0:
        raise CheckError(f"points is empty: shape {points.shape}")
    nets = _checked_nets(entropies, epochs, n, "P")
    for net, H in nets.items():
        if H.shape[2] != p:
            raise CheckError(f"entropies[{net!r}] has {H.shape[2]} points per cloud, points has {p}")
    fg = _checked_mask("foreground", foreground, (n, p))
    names = _checked_names(names, n, "cloud")
    views = [tuple(float(a) for a in v) for v in views]
    if not views or any(len(v) != 2 for v in views):
        raise CheckError(f"views must be (elevation, azimuth) pairs, at least one, got {views}")
    cols = {net: sorted({0, H.shape[1] - 1}) for net, H in nets.items()}
    norm = _norm([H[:, cols[net]] for net, H in nets.items()])

    ncol = max(len(c) for c in cols.values()) * len(views)
    nrow = n * len(nets)
    width, height = P_LEFT + PANEL * ncol + P_RIGHT, P_TOP + PANEL * nrow + P_BOTTOM
    fig = Figure(figsize=(width, height))
    drawn = np.zeros((n, p), bool)  # the points with an entropy in some panel: padding changes nothing
    for net, H in nets.items():
        drawn |= np.isfinite(H[:, cols[net]]).any(axis=1)
    size = float(np.clip(4000.0 / max(int(drawn.sum(axis=1).max()), 1), 3.0, 30.0))
    for i in range(n):
        box = _cube(points[i][drawn[i]])
        for j, (net, H) in enumerate(nets.items()):
            r = i * len(nets) + j
            for c, (k, v) in enumerate((k, v) for k in cols[net] for v in range(len(views))):
                rect = ((P_LEFT + c * PANEL) / width, 1 - (P_TOP + (r + 1) * PANEL) / height, PANEL / width,
                        PANEL / height)
                ax = fig.add_axes(rect, projection="3d")
                _cloud(ax, points[i], H[i, k], fg[i], norm, size, views[v], box)
                ax.set_title(f"{net} e={epochs[net][k]}, view {v + 1}", fontsize=9, color=COLORS[net], pad=0)
            fig.text(0.12 / width, 1 - (P_TOP + (r + 0.5) * PANEL) / height, f"{_plain(names[i])}\n{NAMES[net]}",
                     rotation=90, ha="left", va="center", fontsize=8.5, color=COLORS[net])
    marks = [Line2D([], [], ls="", marker="o", ms=6, color="0.3", label="foreground: the shape's points"),
             Line2D([], [], ls="", marker="x", ms=6, mew=1.2, color="0.3", label="background points")]
    fig.legend(handles=marks, loc="upper left", bbox_to_anchor=(P_LEFT / width, 1 - 0.08 / height), ncol=2,
               fontsize=8.5, frameon=False)
    fig.text(P_LEFT / width, 1 - 0.42 / height, "entropy per point at the first and the last checkpoint "
             "(padded points not drawn)", fontsize=8.5, va="top")
    bar_h = min(PANEL * nrow, 4.0)
    _colorbar(fig, norm, (1 - 0.9 / width, 1 - (P_TOP + bar_h) / height, 0.16 / width, bar_h / height))
    return _png(fig)


def _cube(cloud: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (lo, hi) corners of a cube around the cloud's finite points (those drawn), so that the shape is not
    stretched."""
    finite = cloud[np.isfinite(cloud).all(axis=1)]
    if finite.size == 0:
        return np.full(3, -1.0), np.full(3, 1.0)
    lo, hi = finite.min(axis=0), finite.max(axis=0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6)
    return centre - half, centre + half


def _cloud(ax, cloud: np.ndarray, H: np.ndarray, fg: np.ndarray, norm: Normalize, size: float,
           view: tuple[float, float], box: tuple[np.ndarray, np.ndarray]) -> None:
    """One 3-D panel: the points with a finite entropy, background crosses under foreground circles."""
    drawn = np.isfinite(H) & np.isfinite(cloud).all(axis=1)
    ax.computed_zorder = False  # the shape's points stay on top of the background crosses
    for is_fg, marker, s, z in ((False, "x", 1.2 * size, 1), (True, "o", size, 2)):
        keep = drawn & (fg == is_fg)
        if keep.any():
            x, y, zz = cloud[keep].T
            kw = {"edgecolors": "none"} if is_fg else {"linewidths": 0.7}
            ax.scatter(x, y, zz, c=H[keep], cmap=CMAP, norm=norm, s=s, marker=marker, depthshade=False, zorder=z,
                       **kw)
    lo, hi = box
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_zlim(lo[2], hi[2])
    ax.set_box_aspect((1, 1, 1), zoom=1.15)
    ax.view_init(elev=view[0], azim=view[1])
    ax.set_axis_off()
