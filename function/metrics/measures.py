"""The metrics of docs/method.md §3, as pure numpy functions of entropy maps and foreground masks.

Shapes: ``N`` images, ``K`` checkpoints (oldest first), a ``g×g`` cell grid.

    H  = entropy_map(sigma)                       # (N, K, g, g) from σ* (kdq.function.sigma.entropy)
    Hb = background_baseline(H, fg)               # (K,)   H̄_bg(k)
    C  = concept_masks(H, Hb, b)                  # (N, K, g, g)  H̄_bg(k) − H_i(k) > b
    n_fg, n_bg = concept_counts(C, fg)            # (N, K)
    r   = concept_ratio(n_fg[:, -1], n_bg[:, -1]) # (N,)  0 for an image without concepts
    m   = first_argmax(n_fg, allowed)             # (N,)  m̂(x), first maximum
    rho = stability(C, fg)                        # (N,)  |S_last| / |∪_k S_k|, 0 for an empty union

:func:`per_image_metrics` runs them all for one net (:class:`NetInput`: its maps, masks, checkpoints and
weight distances); :func:`summarise` turns the per-image values into the reported numbers; :func:`compare_nets`
adds the bootstrap of (distil − label).  Each net is measured on its own checkpoints, so the two may have
different schedules.  ``NetInput.original`` reproduces the original code's arithmetic where it differs
(the README's "Differences from the original code").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kdq.function.metrics.bootstrap import bootstrap, percentile_interval


@dataclass(frozen=True)
class Metric:
    key: str  # name in metrics.json / metrics.csv
    label: str  # name in report.md
    direction: int  # +1 the paper predicts distil > label, -1 distil < label, 0 no prediction
    what: str  # one line for the report

    @property
    def predicted(self) -> str | None:
        """The paper's prediction in words ("distil > label"); None where it makes none."""
        return {1: "distil > label", -1: "distil < label"}.get(self.direction)


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
    Metric("slope", "slope", 0, "mean over images of N_fg(m̂) / D(m̂), as the original printed it"),
    Metric("D_mean_bg", "D_mean_bg", 0, "D_mean for background concepts: D at m̂_bg = argmax_k N_bg"),
    Metric("D_var_bg", "D_var_bg", 0, "variance over images of D at m̂_bg"),
    Metric("slope_bg", "slope_bg", 0, "mean over images of N_bg(m̂_bg) / D(m̂_bg)"),
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


def background_baseline(H: np.ndarray, fg: np.ndarray, skip_nan: bool = True) -> np.ndarray:
    """(K,): ``H̄_bg(k)`` = mean over images of each image's background mean.  Images without background cells
    do not take part (NaN if no image has any); ``skip_nan=False`` is the original's plain mean, which an image
    without background turns into NaN."""
    return _mean_over_images(background_means(H, fg), skip_nan)


def _mean_over_images(values: np.ndarray, skip_nan: bool) -> np.ndarray:
    if not skip_nan:
        return values.mean(axis=0)
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


def mhat_allowed(epochs, skip_epoch0: bool) -> np.ndarray:
    """(K,) bool: the checkpoints (by epoch) m̂ may pick — all, or with ``skip_epoch0`` (the ResNet rule) all but
    epoch 0, which is kept when it is the only checkpoint."""
    allowed = np.array([not (skip_epoch0 and e == 0) for e in epochs], dtype=bool)
    return allowed if allowed.any() else np.ones_like(allowed)


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


def distance_index(mhat: np.ndarray, shift: int) -> np.ndarray:
    """The checkpoint index whose D is read for an image whose peak is at checkpoint ``mhat``: ``mhat`` itself;
    ``mhat − 1`` with ``shift=1``, the original's ResNet off-by-one (its argmax runs over a list that starts at
    checkpoint 1 and then indexes the whole schedule)."""
    return np.asarray(mhat) - shift


def peak_slopes(peak_counts: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Per image ``count(m̂) / D(m̂)``: inf (or NaN for 0/0) where D is 0, as numpy divides."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(peak_counts, dtype=np.float64) / np.asarray(D, dtype=np.float64)


def verdict(direction: int, difference: float, lo: float, hi: float) -> str | None:
    """What the interval says of the paper's prediction (``direction``: +1 distil > label, −1 distil < label):
    ``supported`` only when the whole interval lies on the predicted side of 0; ``same sign, not significant``
    when the point estimate does but the interval includes 0; likewise ``opposite …``; None without a prediction."""
    if direction == 0:
        return None
    if not all(np.isfinite([difference, lo, hi])):
        return "undetermined"
    if (direction > 0 and lo > 0) or (direction < 0 and hi < 0):
        return "supported"
    if (direction > 0 and hi < 0) or (direction < 0 and lo > 0):
        return "opposite, significant"
    if difference == 0:
        return "no difference"
    return "same sign, not significant" if difference * direction > 0 else "opposite sign, not significant"


# ---- one net, all images ---------------------------------------------------------------------------

@dataclass
class NetInput:
    """One net's inputs to docs/method.md §3 at one layer."""
    H: np.ndarray  # (N, K, g, g) entropy maps, K = this net's checkpoints
    fg: np.ndarray  # (N, g, g) foreground cells
    D_at: np.ndarray  # (K,) cumulative weight distance at each checkpoint
    allowed: np.ndarray  # (K,) bool: checkpoints m̂ may pick
    original: bool = False  # the original's arithmetic: off-by-one D for ResNets, NaN baseline, inf slopes

    @property
    def shift(self) -> int:
        """1 when the original's off-by-one applies (epoch 0 is left out of m̂), else 0."""
        return int(self.original and not bool(self.allowed[0]))


@dataclass
class PerImage:
    """Per-image values of one net (arrays over the N images, curves over the K checkpoints)."""
    baseline: np.ndarray  # (K,) H̄_bg(k)
    n_fg: np.ndarray  # (N, K)
    n_bg: np.ndarray  # (N, K)
    fg_ratio: np.ndarray  # (N,) N_fg / (N_fg + N_bg) at the last checkpoint (the per-image λ of H1)
    mhat: np.ndarray  # (N,) checkpoint index of m̂ (first maximum of N_fg)
    D: np.ndarray  # (N,) D at m̂
    slope: np.ndarray  # (N,) N_fg(m̂) / D(m̂)
    mhat_bg: np.ndarray  # (N,) checkpoint index of m̂_bg (first maximum of N_bg)
    D_bg: np.ndarray  # (N,) D at m̂_bg
    slope_bg: np.ndarray  # (N,) N_bg(m̂_bg) / D(m̂_bg)
    rho: np.ndarray  # (N,) foreground
    rho_bg: np.ndarray
    rho_total: np.ndarray
    keep_inf_slopes: bool = False
    concepts: np.ndarray | None = field(default=None, repr=False)  # (N, K, g, g) bool: the concept cells

    @property
    def slope_left_out(self) -> tuple[int, int]:
        """Images left out of the mean slope and of the mean background slope because D is 0 at their peak
        (none when the original's inf is kept)."""
        if self.keep_inf_slopes:
            return 0, 0
        return int(np.count_nonzero(self.D == 0)), int(np.count_nonzero(self.D_bg == 0))


def per_image_metrics(net: NetInput, b: float) -> PerImage:
    """All per-image values of docs/method.md §3 for one net."""
    return _per_image(net, background_means(net.H, net.fg), b, np.arange(net.H.shape[0]))


def _per_image(net: NetInput, bg_means: np.ndarray, b: float, idx: np.ndarray) -> PerImage:
    """:func:`per_image_metrics` of the images ``idx`` (a bootstrap resample) with their background means."""
    H, fg = net.H[idx], np.asarray(net.fg, dtype=bool)[idx]
    baseline = _mean_over_images(bg_means[idx], skip_nan=not net.original)
    concepts = concept_masks(H, baseline, b)
    n_fg, n_bg = concept_counts(concepts, fg)
    D_at = np.asarray(net.D_at, dtype=np.float64)
    rows = np.arange(len(idx))
    mhat, mhat_bg = first_argmax(n_fg, net.allowed), first_argmax(n_bg, net.allowed)
    D, D_bg = D_at[distance_index(mhat, net.shift)], D_at[distance_index(mhat_bg, net.shift)]
    return PerImage(baseline=baseline, n_fg=n_fg, n_bg=n_bg, fg_ratio=concept_ratio(n_fg[:, -1], n_bg[:, -1]),
                    mhat=mhat, D=D, slope=peak_slopes(n_fg[rows, mhat], D),
                    mhat_bg=mhat_bg, D_bg=D_bg, slope_bg=peak_slopes(n_bg[rows, mhat_bg], D_bg),
                    rho=stability(concepts, fg), rho_bg=stability(concepts, ~fg),
                    rho_total=stability(concepts, np.ones_like(fg)), keep_inf_slopes=net.original, concepts=concepts)


def mean_slope(slopes: np.ndarray, D: np.ndarray, keep_inf: bool) -> float:
    """The mean slope over images: the original's plain mean (inf/NaN where D = 0) with ``keep_inf``, else
    the mean over the images whose D is not 0 (NaN when none is left)."""
    if keep_inf:
        with np.errstate(invalid="ignore"):
            return float(np.mean(slopes))
    kept = np.asarray(slopes)[np.asarray(D) != 0]
    return float(kept.mean()) if kept.size else float("nan")


def summarise(p: PerImage) -> dict[str, float]:
    """The reported numbers of one net: means over images (std/var with ddof 0)."""
    return {"N_fg": float(p.n_fg[:, -1].mean()), "N_bg": float(p.n_bg[:, -1].mean()),
            "lambda": float(p.fg_ratio.mean()), "D_mean": float(p.D.mean()), "D_std": float(p.D.std()),
            "D_var": float(p.D.var()), "rho": float(p.rho.mean()), "rho_bg": float(p.rho_bg.mean()),
            "rho_total": float(p.rho_total.mean()), "slope": mean_slope(p.slope, p.D, p.keep_inf_slopes),
            "D_mean_bg": float(p.D_bg.mean()), "D_var_bg": float(p.D_bg.var()),
            "slope_bg": mean_slope(p.slope_bg, p.D_bg, p.keep_inf_slopes)}


def _stat_vector(p: PerImage) -> np.ndarray:
    s = summarise(p)
    return np.concatenate([[s[k] for k in SCALARS], p.n_fg.mean(0), p.n_bg.mean(0)])


# ---- label vs distil ------------------------------------------------------------------------------

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
    paired: bool = True  # one resample of the images for both nets (they share their images)
    notes: list[str] = field(default_factory=list)


def compare_nets(label: NetInput, distil: NetInput, b: float, n_boot: int, seed: int, level: float = 0.95,
                 paired: bool = True, loop=iter) -> Comparison:
    """docs/method.md §3 for both nets, with a percentile bootstrap over images.

    ``paired``: the nets were measured on the same images and a replicate resamples them once for both (the
    difference distil − label is resampled image by image); otherwise each net's images are resampled on their
    own.  Every replicate recomputes everything from the maps, the baseline ``H̄_bg(k)`` included.  ``loop``
    wraps the bootstrap's loop (a progress bar).
    """
    nets = {"label": label, "distil": distil}
    if paired and label.H.shape[0] != distil.H.shape[0]:
        raise ValueError("a paired comparison needs the same images for both nets")
    bgm = {k: background_means(v.H, v.fg) for k, v in nets.items()}
    sizes = {k: v.H.shape[0] for k, v in nets.items()}
    per = {k: _per_image(v, bgm[k], b, np.arange(sizes[k])) for k, v in nets.items()}

    def statistic(idx_label: np.ndarray, idx_distil: np.ndarray) -> np.ndarray:
        return np.concatenate([_stat_vector(_per_image(nets[k], bgm[k], b, idx))
                               for k, idx in (("label", idx_label), ("distil", idx_distil))])

    point, reps = bootstrap(statistic, sizes["label"], sizes["distil"], n_boot, seed, paired, loop)
    widths = {k: len(SCALARS) + 2 * v.H.shape[1] for k, v in nets.items()}
    off = {"label": 0, "distil": widths["label"]}
    lo, hi = percentile_interval(reps, level)
    n = len(SCALARS)
    with np.errstate(invalid="ignore"):  # inf − inf (the original's slopes) is NaN, which the interval skips
        dlo, dhi = percentile_interval(reps[:, off["distil"]:off["distil"] + n] - reps[:, :n], level)
    summary = {net: summarise(per[net]) for net in nets}
    rows = []
    for j, m in enumerate(ALL_METRICS):
        lv, dv = point[j], point[off["distil"] + j]
        with np.errstate(invalid="ignore"):
            diff = dv - lv
        holds = None if m.direction == 0 else bool(diff * m.direction > 0)
        excl = None if m.direction == 0 else bool(
            (dlo[j] > 0 and m.direction > 0) or (dhi[j] < 0 and m.direction < 0))
        rows.append({"metric": m.key, "label": float(lv), "distil": float(dv), "difference": float(diff),
                     "difference_ci": [float(dlo[j]), float(dhi[j])],
                     "label_ci": [float(lo[j]), float(hi[j])],
                     "distil_ci": [float(lo[off["distil"] + j]), float(hi[off["distil"] + j])],
                     "predicted": m.predicted,
                     "holds": holds, "ci_excludes_zero_in_predicted_direction": excl,
                     "verdict": verdict(m.direction, float(diff), float(dlo[j]), float(dhi[j]))})
    curves = {}
    for net in nets:
        K, s = nets[net].H.shape[1], off[net] + n
        curves[net] = {"n_fg_mean": point[s:s + K].tolist(), "n_fg_ci": [lo[s:s + K].tolist(), hi[s:s + K].tolist()],
                       "n_bg_mean": point[s + K:s + 2 * K].tolist(),
                       "n_bg_ci": [lo[s + K:s + 2 * K].tolist(), hi[s + K:s + 2 * K].tolist()]}
    notes = []
    for net in nets:
        fg_out, bg_out = per[net].slope_left_out
        if fg_out or bg_out:
            notes.append(f"{net} net: D is 0 at the peak of {fg_out} image(s) (m̂) and {bg_out} (m̂_bg); they are "
                         "left out of slope and slope_bg (--compat original keeps the original's inf)")
    return Comparison(per["label"], per["distil"], summary, rows, curves, n_boot, seed, level, paired, notes)
