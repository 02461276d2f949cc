"""The metrics of SPEC §3, as pure numpy functions of entropy maps and foreground masks.

Shapes: ``N`` images, ``K`` checkpoints (oldest first), a ``g×g`` cell grid.

    H  = entropy_map(sigma)                       # (N, K, g, g) from σ* (kdq.function.sigma.entropy)
    Hb = background_baseline(H, fg)               # (K,)   H̄_bg(k)
    C  = concept_masks(H, Hb, b)                  # (N, K, g, g)  H̄_bg(k) − H_i(k) > b
    n_fg, n_bg = concept_counts(C, fg)            # (N, K)
    r   = concept_ratio(n_fg[:, -1], n_bg[:, -1]) # (N,)  0 for an image without concepts
    m   = first_argmax(n_fg, allowed)             # (N,)  m̂(x), first maximum
    rho = stability(C, fg)                        # (N,)  |S_last| / |∪_k S_k|, 0 for an empty union

:func:`per_image_metrics` runs them all for one net; :func:`summarise` turns the per-image values
into the reported numbers; :func:`compare` adds the paired bootstrap of (distil − label).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdq.function.metrics.bootstrap import paired_bootstrap, percentile_interval


@dataclass(frozen=True)
class Metric:
    key: str  # name in metrics.json / metrics.csv
    label: str  # name in report.md
    direction: int  # +1 the paper predicts distil > label, -1 distil < label, 0 no prediction
    what: str  # one line for the report


METRICS: tuple[Metric, ...] = (
    Metric("N_fg", "N_fg", +1, "foreground concepts at the last checkpoint (mean over images)"),
    Metric("N_bg", "N_bg", -1, "background concepts at the last checkpoint (mean over images)"),
    Metric("lambda", "λ", +1, "mean of N_fg / (N_fg + N_bg) at the last checkpoint (0 without concepts)"),
    Metric("D_mean", "D_mean", -1, "mean over images of the cumulative weight distance at m̂"),
    Metric("D_std", "D_std", -1, "std over images (ddof 0) of the cumulative weight distance at m̂"),
    Metric("rho", "ρ", +1, "mean of |S_last| / |∪_k S_k| over foreground concept cells"),
)
SECONDARY: tuple[Metric, ...] = (
    Metric("D_var", "D_var", -1, "variance over images (ddof 0) of D(x), as the original code printed"),
    Metric("rho_bg", "ρ_bg", 0, "ρ over background concept cells"),
    Metric("rho_total", "ρ_total", 0, "ρ over all concept cells"),
)
ALL_METRICS = METRICS + SECONDARY
SCALARS = tuple(m.key for m in ALL_METRICS)


# ---- the formulas ---------------------------------------------------------------------------------

def screen_sigma(sigma: np.ndarray) -> str | None:
    """Why an image's σ* cannot be used (``'non-finite'`` / ``'non-positive'``), or None if it can."""
    sigma = np.asarray(sigma)
    if not np.all(np.isfinite(sigma)):
        return "non-finite"
    if not np.all(sigma > 0):
        return "non-positive"
    return None


def background_means(H: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """(N, K): each image's mean of ``H`` over its background cells (NaN when it has none)."""
    bg = ~np.asarray(fg, dtype=bool)
    n_bg = bg.sum(axis=(-2, -1))  # (N,)
    total = np.where(bg[:, None], H, 0.0).sum(axis=(-2, -1))  # (N, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_bg[:, None] > 0, total / np.maximum(n_bg, 1)[:, None], np.nan)


def background_baseline(H: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """(K,): ``H̄_bg(k)`` = mean over images of each image's background mean (images without
    background cells do not take part; NaN if no image has any)."""
    return _nanmean0(background_means(H, fg))


def _nanmean0(values: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(values)
    count = ok.sum(axis=0)
    total = np.where(ok, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def concept_masks(H: np.ndarray, baseline: np.ndarray, b: float) -> np.ndarray:
    """(N, K, g, g) bool: cell is a visual concept when ``H̄_bg(k) − H_i(k) > b`` (strictly)."""
    return (np.asarray(baseline)[None, :, None, None] - H) > b


def concept_counts(concepts: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``N_fg``, ``N_bg``: (N, K) counts of concept cells on foreground / background cells."""
    fg = np.asarray(fg, dtype=bool)[:, None]
    return (concepts & fg).sum(axis=(-2, -1)), (concepts & ~fg).sum(axis=(-2, -1))


def concept_ratio(n_fg: np.ndarray, n_bg: np.ndarray) -> np.ndarray:
    """``N_fg / (N_fg + N_bg)`` per image; 0 for an image with no concepts."""
    n_fg, n_bg = np.asarray(n_fg, dtype=np.float64), np.asarray(n_bg, dtype=np.float64)
    total = n_fg + n_bg
    return np.where(total > 0, n_fg / np.maximum(total, 1), 0.0)


def first_argmax(values: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """Per row, the index of the first maximum over the last axis, among ``allowed`` (bool (K,)) columns."""
    values = np.asarray(values, dtype=np.float64)
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if not allowed.any():
            raise ValueError("first_argmax: no checkpoint allowed")
        values = np.where(allowed, values, -np.inf)
    return np.argmax(values, axis=-1)  # numpy returns the first occurrence of the maximum


def stability(concepts: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(N,): ``|S_last| / |∪_k S_k|`` with ``S_k`` the concept cells inside ``region`` (bool (N, g, g))
    at checkpoint ``k``; 0 when the union is empty."""
    region = np.asarray(region, dtype=bool)
    last = (concepts[:, -1] & region).sum(axis=(-2, -1))
    union = (concepts.any(axis=1) & region).sum(axis=(-2, -1))
    return np.where(union > 0, last / np.maximum(union, 1), 0.0)


# ---- one net, all images ---------------------------------------------------------------------------

@dataclass
class PerImage:
    """Per-image values of one net (arrays over the N images, curves over the K checkpoints)."""
    baseline: np.ndarray  # (K,) H̄_bg(k)
    n_fg: np.ndarray  # (N, K)
    n_bg: np.ndarray  # (N, K)
    fg_ratio: np.ndarray  # (N,) N_fg / (N_fg + N_bg) at the last checkpoint (the per-image λ of H1)
    mhat: np.ndarray  # (N,) checkpoint index of m̂
    D: np.ndarray  # (N,) D at m̂
    rho: np.ndarray  # (N,) foreground
    rho_bg: np.ndarray
    rho_total: np.ndarray


def per_image_metrics(H: np.ndarray, fg: np.ndarray, b: float, D_at: np.ndarray,
                      allowed: np.ndarray | None = None) -> PerImage:
    """All per-image values of SPEC §3 for one net.

    ``H`` (N, K, g, g) entropy maps, ``fg`` (N, g, g) foreground cells, ``D_at`` (K,) the cumulative
    weight distance at each checkpoint, ``allowed`` (K,) the checkpoints m̂ may pick.
    """
    return _per_image(H, fg, background_means(H, fg), b, D_at, allowed)


def _per_image(H, fg, bg_means, b, D_at, allowed) -> PerImage:
    baseline = _nanmean0(bg_means)
    concepts = concept_masks(H, baseline, b)
    n_fg, n_bg = concept_counts(concepts, fg)
    mhat = first_argmax(n_fg, allowed)
    fg = np.asarray(fg, dtype=bool)
    return PerImage(baseline=baseline, n_fg=n_fg, n_bg=n_bg, fg_ratio=concept_ratio(n_fg[:, -1], n_bg[:, -1]),
                    mhat=mhat, D=np.asarray(D_at, dtype=np.float64)[mhat], rho=stability(concepts, fg),
                    rho_bg=stability(concepts, ~fg), rho_total=stability(concepts, np.ones_like(fg)))


def summarise(p: PerImage) -> dict[str, float]:
    """The reported numbers of one net: means over images (std/var with ddof 0)."""
    return {"N_fg": float(p.n_fg[:, -1].mean()), "N_bg": float(p.n_bg[:, -1].mean()),
            "lambda": float(p.fg_ratio.mean()), "D_mean": float(p.D.mean()), "D_std": float(p.D.std()),
            "D_var": float(p.D.var()), "rho": float(p.rho.mean()), "rho_bg": float(p.rho_bg.mean()),
            "rho_total": float(p.rho_total.mean())}


def _stat_vector(p: PerImage) -> np.ndarray:
    s = summarise(p)
    return np.concatenate([[s[k] for k in SCALARS], p.n_fg.mean(0), p.n_bg.mean(0)])


# ---- label vs distil ------------------------------------------------------------------------------

@dataclass
class NetInput:
    H: np.ndarray  # (N, K, g, g)
    D_at: np.ndarray  # (K,)
    allowed: np.ndarray  # (K,) bool: checkpoints m̂ may pick


@dataclass
class Comparison:
    label: PerImage
    distil: PerImage
    summary: dict[str, dict[str, float]]  # net → metric → value
    rows: list[dict]  # one per metric of ALL_METRICS: values, difference, intervals, prediction
    curves: dict[str, dict[str, list]]  # net → n_fg_mean / n_bg_mean and their interval bands
    n_boot: int
    seed: int
    level: float


def compare(label: NetInput, distil: NetInput, fg: np.ndarray, b: float, n_boot: int, seed: int,
            level: float = 0.95) -> Comparison:
    """SPEC §3 for both nets on the same images, with a paired percentile bootstrap over images.

    A bootstrap replicate resamples the images (the same draw for both nets) and recomputes
    everything from the maps, the baseline ``H̄_bg(k)`` included.
    """
    fg = np.asarray(fg, dtype=bool)
    n = fg.shape[0]
    nets = {"label": label, "distil": distil}
    bgm = {k: background_means(v.H, fg) for k, v in nets.items()}
    per = {k: _per_image(v.H, fg, bgm[k], b, v.D_at, v.allowed) for k, v in nets.items()}

    def statistic(idx: np.ndarray) -> np.ndarray:
        return np.concatenate([_stat_vector(_per_image(v.H[idx], fg[idx], bgm[k][idx], b, v.D_at, v.allowed))
                               for k, v in nets.items()])

    point, reps = paired_bootstrap(statistic, n, n_boot, seed)
    K = label.H.shape[1]
    width = len(SCALARS) + 2 * K
    lo, hi = percentile_interval(reps, level)
    dlo, dhi = percentile_interval(reps[:, width:] - reps[:, :width], level)
    summary = {net: summarise(per[net]) for net in nets}
    rows = []
    for j, m in enumerate(ALL_METRICS):
        lv, dv = point[j], point[width + j]
        diff = dv - lv
        holds = None if m.direction == 0 else bool(diff * m.direction > 0)
        excl = None if m.direction == 0 else bool(
            (dlo[j] > 0 and m.direction > 0) or (dhi[j] < 0 and m.direction < 0))
        rows.append({"metric": m.key, "label": float(lv), "distil": float(dv), "difference": float(diff),
                     "difference_ci": [float(dlo[j]), float(dhi[j])],
                     "label_ci": [float(lo[j]), float(hi[j])],
                     "distil_ci": [float(lo[width + j]), float(hi[width + j])],
                     "predicted": {1: "distil > label", -1: "distil < label", 0: None}[m.direction],
                     "holds": holds, "ci_excludes_zero_in_predicted_direction": excl})
    curves = {}
    for net, off in (("label", 0), ("distil", width)):
        s = off + len(SCALARS)
        curves[net] = {"n_fg_mean": point[s:s + K].tolist(), "n_fg_ci": [lo[s:s + K].tolist(), hi[s:s + K].tolist()],
                       "n_bg_mean": point[s + K:s + 2 * K].tolist(),
                       "n_bg_ci": [lo[s + K:s + 2 * K].tolist(), hi[s + K:s + 2 * K].tolist()]}
    return Comparison(per["label"], per["distil"], summary, rows, curves, n_boot, seed, level)
