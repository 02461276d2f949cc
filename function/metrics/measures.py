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
(docs/original-code.md, "Differences from the original code").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kdq.function.metrics.bootstrap import bootstrap, percentile_interval, two_level_bootstrap
from kdq.function.metrics.config import MetricsConfig


@dataclass(frozen=True)
class Metric:
    key: str  # name in metrics.json / metrics.csv
    label: str  # name in report.md
    direction: int  # +1 the paper predicts distil > label, -1 distil < label, 0 no prediction
    what: str  # one line for the report
    peak: str | None = None  # "fg"/"bg": the metric is read at m̂ / m̂_bg (so a one-checkpoint schedule fixes it)

    @property
    def predicted(self) -> str | None:
        """The paper's prediction in words ("distil > label"); None where it makes none."""
        return {1: "distil > label", -1: "distil < label"}.get(self.direction)


METRICS: tuple[Metric, ...] = (
    Metric("N_fg", "N_fg", +1, "foreground concepts at the last checkpoint (mean over images)"),
    Metric("N_bg", "N_bg", -1, "background concepts at the last checkpoint (mean over images)"),
    Metric("lambda", "λ", +1, "mean of N_fg / (N_fg + N_bg) at the last checkpoint (0 without concepts)"),
    Metric("D_mean", "D_mean", -1, "mean over images of the cumulative weight distance at m̂", "fg"),
    Metric("D_std", "D_std", -1, "std over images (ddof 0) of the cumulative weight distance at m̂", "fg"),
    Metric("rho", "ρ", +1, "mean of |S_last| / |∪_k S_k| over foreground concept cells"),
)
SECONDARY: tuple[Metric, ...] = (
    Metric("D_var", "D_var", -1, "variance over images (ddof 0) of D(x), as the original code printed", "fg"),
    Metric("rho_bg", "ρ_bg", 0, "ρ over background concept cells"),
    Metric("rho_total", "ρ_total", 0, "ρ over all concept cells"),
    Metric("slope", "slope", 0, "mean over images of N_fg(m̂) / D(m̂), as the original printed it", "fg"),
    Metric("D_mean_bg", "D_mean_bg", 0, "D_mean for background concepts: D at m̂_bg = argmax_k N_bg", "bg"),
    Metric("D_var_bg", "D_var_bg", 0, "variance over images of D at m̂_bg", "bg"),
    Metric("slope_bg", "slope_bg", 0, "mean over images of N_bg(m̂_bg) / D(m̂_bg)", "bg"),
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


def background_means(H: np.ndarray, fg: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(N, K): each image's mean of ``H`` over its background cells (NaN when it has none).  ``valid`` (like
    ``fg``): the units that are units (tokens: not padding; None: every cell) — the others are no background."""
    bg = ~np.asarray(fg, dtype=bool)
    if valid is not None:
        bg = bg & np.asarray(valid, dtype=bool)
    n_bg = bg.sum(axis=(-2, -1))  # (N,)
    total = np.where(bg[:, None], H, 0.0).sum(axis=(-2, -1))  # (N, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_bg[:, None] > 0, total / np.maximum(n_bg, 1)[:, None], np.nan)


def background_baseline(H: np.ndarray, fg: np.ndarray, skip_nan: bool = True,
                        valid: np.ndarray | None = None) -> np.ndarray:
    """(K,): ``H̄_bg(k)`` = mean over images of each image's background mean.  Images without background cells
    do not take part (NaN if no image has any); ``skip_nan=False`` is the original's plain mean, which an image
    without background turns into NaN."""
    return _mean_over_images(background_means(H, fg, valid), skip_nan)


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


MIN_IMAGES = 10  # fewer images than this in a comparison: no verdict at all (docs/method.md §3, "Verdicts")


def verdict(direction: int, difference: float, lo: float, hi: float) -> str | None:
    """What the interval says of the paper's prediction (``direction``: +1 distil > label, −1 distil < label):
    ``supported`` only when the whole interval lies on the predicted side of 0; ``same sign, not significant``
    when the point estimate does but the interval includes 0; likewise ``opposite …``; None without a prediction.
    Call it only where :func:`no_verdict_reason` finds none."""
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


def no_verdict_reason(values: tuple[float, float, float], interval: tuple[float, float], replicates: np.ndarray,
                      fixed_by_schedule: bool, n_images: int) -> str | None:
    """Why a predicted metric gets no verdict, or None when the data can carry one (docs/method.md §3,
    "Verdicts"): fewer than :data:`MIN_IMAGES` images; a metric read at m̂ when a net's schedule leaves m̂ a single
    checkpoint to pick; a label, distil or difference estimate that is not finite; an interval that is not
    finite; or a bootstrap whose resamples of the difference are all equal (a zero-width interval)."""
    if n_images < MIN_IMAGES:
        return f"only {n_images} image{'s' if n_images != 1 else ''} (fewer than {MIN_IMAGES})"
    if fixed_by_schedule:
        return "fixed by the checkpoint schedule: m̂ has a single checkpoint to pick"
    if not np.all(np.isfinite(values)):
        return "the estimate is not a number (NaN/inf)"
    if not np.all(np.isfinite(interval)):
        return "the interval is undefined (its resamples are NaN/inf)"
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if interval[0] == interval[1] or (reps.size and reps.min() == reps.max()):
        return "every resample gives the same difference: a zero-width interval"
    return None


# ---- one net, all images ---------------------------------------------------------------------------

@dataclass
class NetInput:
    """One net's inputs to docs/method.md §3 at one layer."""
    H: np.ndarray  # (N, K, g, g) entropy maps, K = this net's checkpoints
    fg: np.ndarray  # (N, g, g) foreground cells
    D_at: np.ndarray  # (K,) cumulative weight distance at each checkpoint
    allowed: np.ndarray  # (K,) bool: checkpoints m̂ may pick
    original: bool = False  # the original's arithmetic: off-by-one D for ResNets, NaN baseline, inf slopes
    valid: np.ndarray | None = None  # (N, g, g) bool: the units that are units (tokens: not padding); None: all.
    #                                  Tokens and points are a 1×U grid (N, K, 1, U), NaN entropy on non-units

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
    return _per_image(net, background_means(net.H, net.fg, net.valid), b, np.arange(net.H.shape[0]))


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


def centred(values: np.ndarray) -> tuple[float, np.ndarray]:
    """``(x₀, x − x₀)`` with ``x₀`` the first value: moments computed on the deviations are free of rounding
    residue when every value is the same (the mean is then exactly ``x₀``, the spread exactly 0)."""
    values = np.asarray(values, dtype=np.float64)
    x0 = float(values.flat[0]) if values.size and np.isfinite(values.flat[0]) else 0.0
    return x0, values - x0


def exact_mean(values: np.ndarray) -> float:
    """The mean, exactly ``x`` for values that are all ``x`` (floating-point residue is not a value)."""
    x0, dev = centred(values)
    return float(x0 + dev.mean())


def exact_var(values: np.ndarray, ddof: int = 0) -> float:
    """The variance (ddof 0 by default), exactly 0 for values that are all equal."""
    return float(centred(values)[1].var(ddof=ddof))


def summarise(p: PerImage) -> dict[str, float]:
    """The reported numbers of one net: means over images (std/var with ddof 0)."""
    return {"N_fg": float(p.n_fg[:, -1].mean()), "N_bg": float(p.n_bg[:, -1].mean()),
            "lambda": float(p.fg_ratio.mean()), "D_mean": exact_mean(p.D), "D_std": float(np.sqrt(exact_var(p.D))),
            "D_var": exact_var(p.D), "rho": float(p.rho.mean()), "rho_bg": float(p.rho_bg.mean()),
            "rho_total": float(p.rho_total.mean()), "slope": mean_slope(p.slope, p.D, p.keep_inf_slopes),
            "D_mean_bg": exact_mean(p.D_bg), "D_var_bg": exact_var(p.D_bg),
            "slope_bg": mean_slope(p.slope_bg, p.D_bg, p.keep_inf_slopes)}


def _stat_vector(p: PerImage) -> np.ndarray:
    s = summarise(p)
    return np.concatenate([[s[k] for k in SCALARS], p.n_fg.mean(0), p.n_bg.mean(0)])


# ---- label vs distil ------------------------------------------------------------------------------

@dataclass
class Comparison:
    label: PerImage  # the first label run's per-image values (the figures and metrics.csv show each run)
    distil: PerImage
    summary: dict[str, dict[str, float]]  # net → metric → value (pooled over the net's runs)
    rows: list[dict]  # one per metric of ALL_METRICS: values, difference, intervals, prediction, verdict
    curves: dict[str, dict[str, list]]  # net → n_fg_mean / n_bg_mean and their interval bands
    n_boot: int
    seed: int
    level: float
    paired: bool = True  # one resample of the images for both nets (they share their images)
    notes: list[str] = field(default_factory=list)
    runs: dict[str, list[PerImage]] = field(default_factory=dict)  # net → per-image values of each of its runs
    run_summaries: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # net → each run's numbers

    @property
    def n_runs(self) -> dict[str, int]:
        """net → how many training runs it pools (1 when runs were not given)."""
        return {net: len(self.runs[net]) for net in ("label", "distil")}


def peak_fixed(nets: list[NetInput]) -> bool:
    """Whether m̂ and m̂_bg are fixed by a schedule: some net may pick only one checkpoint, so every metric read
    at a peak is the schedule's, not the data's."""
    return any(int(np.count_nonzero(net.allowed)) == 1 for net in nets)


def _finite_or_nan(value: float, interval: list[float]) -> list[float]:
    """An interval shown beside a non-finite estimate is meaningless: NaN bounds then."""
    return interval if np.isfinite(value) else [float("nan"), float("nan")]


def comparison_rows(point: dict[str, np.ndarray], reps: dict[str, np.ndarray], level: float,
                    fixed: bool, n_images: int,
                    per_run: dict[str, list[np.ndarray]] | None = None) -> list[dict]:
    """One row per metric of ALL_METRICS from the point vectors and replicates of both nets (their first
    ``len(SCALARS)`` entries), with the difference's interval, the verdict or the reason there is none, and —
    with ``per_run`` — each run's value and the spread between runs (std, ddof 1)."""
    n = len(SCALARS)
    lo, hi = {}, {}
    for net in ("label", "distil"):
        lo[net], hi[net] = percentile_interval(reps[net][:, :n], level)
    with np.errstate(invalid="ignore"):  # inf − inf (the original's slopes) is NaN, which the interval skips
        diff_reps = reps["distil"][:, :n] - reps["label"][:, :n]
    dlo, dhi = percentile_interval(diff_reps, level)
    rows = []
    for j, m in enumerate(ALL_METRICS):
        lv, dv = float(point["label"][j]), float(point["distil"][j])
        with np.errstate(invalid="ignore"):
            diff = dv - lv
        interval = _finite_or_nan(diff, [float(dlo[j]), float(dhi[j])])
        reason = None if m.direction == 0 else no_verdict_reason(
            (lv, dv, diff), tuple(interval), diff_reps[:, j], bool(m.peak) and fixed, n_images)
        holds = None if m.direction == 0 or not np.isfinite(diff) else bool(diff * m.direction > 0)
        excl = None if m.direction == 0 or reason else bool(
            (interval[0] > 0 and m.direction > 0) or (interval[1] < 0 and m.direction < 0))
        row = {"metric": m.key, "label": lv, "distil": dv, "difference": float(diff), "difference_ci": interval,
               "label_ci": _finite_or_nan(lv, [float(lo["label"][j]), float(hi["label"][j])]),
               "distil_ci": _finite_or_nan(dv, [float(lo["distil"][j]), float(hi["distil"][j])]),
               "predicted": m.predicted, "holds": holds, "ci_excludes_zero_in_predicted_direction": excl,
               "verdict": None if reason else verdict(m.direction, float(diff), *interval),
               "no_verdict": reason}
        if per_run is not None:
            row["per_run"] = {net: [float(v[j]) for v in per_run[net]] for net in per_run}
            row["spread"] = {net: (exact_var([v[j] for v in per_run[net]], ddof=1) ** 0.5
                                   if len(per_run[net]) > 1 else None) for net in per_run}
        rows.append(row)
    return rows


def _curves(point: dict[str, np.ndarray], reps: dict[str, np.ndarray], K: dict[str, int],
            level: float) -> dict[str, dict[str, list]]:
    n = len(SCALARS)
    curves = {}
    for net in ("label", "distil"):
        lo, hi = percentile_interval(reps[net], level)
        k = K[net]
        curves[net] = {"n_fg_mean": point[net][n:n + k].tolist(), "n_fg_ci": [lo[n:n + k].tolist(), hi[n:n + k].tolist()],
                       "n_bg_mean": point[net][n + k:n + 2 * k].tolist(),
                       "n_bg_ci": [lo[n + k:n + 2 * k].tolist(), hi[n + k:n + 2 * k].tolist()]}
    return curves


def _slope_notes(per: dict[str, list[PerImage]]) -> list[str]:
    notes = []
    for net, runs in per.items():
        for r, p in enumerate(runs):
            fg_out, bg_out = p.slope_left_out
            if fg_out or bg_out:
                which = f" (run {r + 1})" if len(runs) > 1 else ""
                notes.append(f"{net} net{which}: D is 0 at the peak of {fg_out} image(s) (m̂) and {bg_out} (m̂_bg); "
                             "they are left out of slope and slope_bg (--compat original keeps the original's inf)")
    return notes


def compare_runs(label: list[NetInput], distil: list[NetInput], b: float, n_boot: int, seed: int,
                 level: float = MetricsConfig.level, loop=iter, paired: bool = True) -> Comparison:
    """docs/method.md §3 for both nets, each pooled over one or more training runs, with the two-level bootstrap of
    :func:`~kdq.function.metrics.bootstrap.two_level_bootstrap` (runs within each net, and the images: one draw
    shared by every run when ``paired`` — every run measured on the same images —, else drawn per drawn run).
    Every metric is computed per run; a net's value is the mean over its runs.  With one run per net and paired
    images this is the paired image bootstrap of :func:`compare_nets`, number for number."""
    nets = {"label": list(label), "distil": list(distil)}
    for net, runs in nets.items():
        if not runs:
            raise ValueError(f"the {net} net needs at least one run")
        if len({x.H.shape[1] for x in runs}) != 1:
            raise ValueError(f"the runs of the {net} net have different numbers of checkpoints")
    bgm = {net: [background_means(x.H, x.fg, x.valid) for x in runs] for net, runs in nets.items()}

    def statistic(net: str, r: int, idx: np.ndarray) -> np.ndarray:
        return _stat_vector(_per_image(nets[net][r], bgm[net][r], b, idx))

    sizes = {net: [x.H.shape[0] for x in runs] for net, runs in nets.items()}
    if paired and len({n for s in sizes.values() for n in s}) != 1:
        raise ValueError(f"a paired comparison needs the same images in every run, got {sizes}")
    point, per_run, reps = two_level_bootstrap(statistic, sizes, n_boot, seed, paired, loop)
    per = {net: [_per_image(x, bgm[net][r], b, np.arange(x.H.shape[0])) for r, x in enumerate(runs)]
           for net, runs in nets.items()}
    N = min(n for s in sizes.values() for n in s)
    summaries = {net: [summarise(p) for p in runs] for net, runs in per.items()}
    summary = {net: dict(zip(SCALARS, map(float, point[net][:len(SCALARS)]))) for net in nets}
    several = any(len(runs) > 1 for runs in nets.values())
    rows = comparison_rows(point, reps, level, peak_fixed(nets["label"] + nets["distil"]), N,
                           per_run if several else None)
    curves = _curves(point, reps, {net: runs[0].H.shape[1] for net, runs in nets.items()}, level)
    return Comparison(per["label"][0], per["distil"][0], summary, rows, curves, n_boot, seed, level, paired,
                      _slope_notes(per), per, summaries)


def compare_nets(label: NetInput, distil: NetInput, b: float, n_boot: int, seed: int, level: float = MetricsConfig.level,
                 paired: bool = True, loop=iter) -> Comparison:
    """docs/method.md §3 for one run per net, with a percentile bootstrap over images.

    ``paired``: the nets were measured on the same images and a replicate resamples them once for both (the
    difference distil − label is resampled image by image: :func:`compare_runs` with one run each); otherwise
    (the original's per-net image sets) each net's images are resampled on their own.  Every replicate recomputes
    everything from the maps, the baseline ``H̄_bg(k)`` included.  ``loop`` wraps the bootstrap's loop.
    """
    if paired:
        if label.H.shape[0] != distil.H.shape[0]:
            raise ValueError("a paired comparison needs the same images for both nets")
        return compare_runs([label], [distil], b, n_boot, seed, level, loop)
    nets = {"label": label, "distil": distil}
    bgm = {k: background_means(v.H, v.fg, v.valid) for k, v in nets.items()}
    sizes = {k: v.H.shape[0] for k, v in nets.items()}
    per = {k: _per_image(v, bgm[k], b, np.arange(sizes[k])) for k, v in nets.items()}

    def statistic(idx_label: np.ndarray, idx_distil: np.ndarray) -> np.ndarray:
        return np.concatenate([_stat_vector(_per_image(nets[k], bgm[k], b, idx))
                               for k, idx in (("label", idx_label), ("distil", idx_distil))])

    flat, flat_reps = bootstrap(statistic, sizes["label"], sizes["distil"], n_boot, seed, paired=False, loop=loop)
    width = len(SCALARS) + 2 * label.H.shape[1]
    point = {"label": flat[:width], "distil": flat[width:]}
    reps = {"label": flat_reps[:, :width], "distil": flat_reps[:, width:]}
    summary = {net: summarise(per[net]) for net in nets}
    rows = comparison_rows(point, reps, level, peak_fixed([label, distil]), min(sizes.values()))
    curves = _curves(point, reps, {net: x.H.shape[1] for net, x in nets.items()}, level)
    return Comparison(per["label"], per["distil"], summary, rows, curves, n_boot, seed, level, False,
                      _slope_notes({k: [v] for k, v in per.items()}), {k: [v] for k, v in per.items()},
                      {k: [v] for k, v in summary.items()})
