"""function/metrics/measures.py and function/metrics/bootstrap.py on tiny hand-built arrays with hand-computed answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kdq.function.metrics.bootstrap import bootstrap, mean_interval, percentile_interval
from kdq.function.sigma.entropy import HALF_LOG_2PIE, entropy_map
from kdq.function.metrics.measures import (NetInput, background_baseline, background_means, compare_nets,
                              concept_counts, concept_masks, concept_ratio, first_argmax, mhat_allowed,
                              per_image_metrics, screen_sigma, stability, summarise)


def cells(*rows):
    """(g, g) array from rows."""
    return np.array(rows, dtype=np.float64)


def test_entropy_of_the_initial_sigma_is_a_literal():
    # log 0.01 + ½·log(2πe) = −4.60517 + 1.41894, computed by hand
    assert float(entropy_map(0.01)) == pytest.approx(-3.18623, abs=1e-5)
    assert float(entropy_map(np.array([1.0]))[0]) == pytest.approx(1.41894, abs=1e-5)


def test_entropy_map_is_log_sigma_plus_half_log_2pie():
    assert HALF_LOG_2PIE == pytest.approx(0.5 * math.log(2 * math.pi) + 0.5)
    H = entropy_map(np.array([1.0, math.e, math.exp(-2)]))
    assert H == pytest.approx([HALF_LOG_2PIE, 1 + HALF_LOG_2PIE, -2 + HALF_LOG_2PIE])


def test_screen_sigma():
    assert screen_sigma(np.ones((2, 2))) is None
    assert screen_sigma(np.array([1.0, np.nan])) == "non-finite"
    assert screen_sigma(np.array([1.0, np.inf])) == "non-finite"
    assert screen_sigma(np.array([1.0, 0.0])) == "non-positive"
    assert screen_sigma(np.array([1.0, -0.5])) == "non-positive"


def test_background_mean_uses_background_cells_only():
    # one image, one checkpoint, 2x2; foreground = top-left cell, which holds a huge value
    H = cells([100.0, 1.0], [2.0, 3.0])[None, None]
    fg = np.array([[[True, False], [False, False]]])
    assert background_means(H, fg)[0, 0] == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    # baseline = mean over images of per-image bg means (not the mean over all bg cells pooled)
    H2 = np.stack([cells([100.0, 1.0], [2.0, 3.0]), cells([0.0, 0.0], [10.0, 10.0])])[:, None]
    fg2 = np.array([[[True, False], [False, False]], [[True, True], [True, False]]])
    # image 1: bg mean 2; image 2: one bg cell = 10 → baseline (2 + 10) / 2 = 6 (pooled would be 16/4 = 4)
    assert background_baseline(H2, fg2) == pytest.approx([6.0])


def test_image_without_background_does_not_enter_baseline():
    H = np.stack([cells([0.0, 4.0], [4.0, 4.0]), cells([9.0, 9.0], [9.0, 9.0])])[:, None]
    fg = np.array([[[True, False], [False, False]], [[True, True], [True, True]]])
    assert np.isnan(background_means(H, fg)[1, 0])
    assert background_baseline(H, fg) == pytest.approx([4.0])


def test_threshold_exactly_b_is_not_a_concept():
    H = cells([0.5, 0.4999], [1.0, 0.0])[None, None]
    c = concept_masks(H, np.array([1.0]), 0.5)[0, 0]
    # 1 - 0.5 = 0.5 is not > 0.5; 1 - 0.4999 > 0.5; 1 - 1 = 0; 1 - 0 = 1 > 0.5
    assert c.tolist() == [[False, True], [False, True]]


def test_concept_counts_split_by_foreground():
    concepts = np.array([[[[True, True], [False, True]], [[False, False], [False, False]]]])  # (1, 2, 2, 2)
    fg = np.array([[[True, False], [False, False]]])
    n_fg, n_bg = concept_counts(concepts, fg)
    assert n_fg.tolist() == [[1, 0]] and n_bg.tolist() == [[2, 0]]


def test_lambda_image_without_concepts_counts_zero():
    lam = concept_ratio(np.array([3, 0, 1]), np.array([1, 0, 0]))
    assert lam.tolist() == [0.75, 0.0, 1.0]
    assert lam.mean() == pytest.approx((0.75 + 0 + 1) / 3)  # not (0.75 + 1) / 2


def test_mhat_is_the_first_argmax():
    n_fg = np.array([[1, 3, 3, 2], [0, 0, 0, 0], [5, 1, 5, 0]])
    assert first_argmax(n_fg).tolist() == [1, 0, 0]
    allowed = np.array([False, True, True, True])  # the ResNet rule: epoch 0 left out
    assert first_argmax(n_fg, allowed).tolist() == [1, 1, 2]
    with pytest.raises(ValueError):
        first_argmax(n_fg, np.zeros(4, dtype=bool))


def test_mhat_may_pick_every_epoch_but_epoch_0_under_the_resnet_rule():
    assert mhat_allowed([0, 2, 5], skip_epoch0=True).tolist() == [False, True, True]
    assert mhat_allowed([2, 5], skip_epoch0=True).tolist() == [True, True]  # by epoch, not by position
    assert mhat_allowed([0], skip_epoch0=True).tolist() == [True]  # the only checkpoint is kept
    assert mhat_allowed([0, 2], skip_epoch0=False).tolist() == [True, True]


def test_rho_empty_union_is_zero_and_ratio_otherwise():
    # K = 3, 1x3 grid (g×g generalised to a row): cells 0,1 foreground
    c = np.zeros((2, 3, 1, 3), dtype=bool)
    c[0, 0, 0, 0] = True  # image 0: S_0 = {0}, S_1 = {1}, S_2 = {1} → |S_last| / |union| = 1/2
    c[0, 1, 0, 1] = True
    c[0, 2, 0, 1] = True
    c[1, :, 0, 2] = True  # image 1: concepts only on a background cell → foreground union empty → 0
    fg = np.array([[[True, True, False]], [[True, True, False]]])
    assert stability(c, fg).tolist() == [0.5, 0.0]
    assert stability(c, ~fg).tolist() == [0.0, 1.0]
    assert stability(c, np.ones_like(fg)).tolist() == [0.5, 1.0]


def test_per_image_metrics_by_hand():
    # 2 images, K = 2, 2x2 grid; foreground = left column
    fg = np.array([[[True, False], [True, False]]] * 2)
    H = np.zeros((2, 2, 2, 2))
    H[0, 1] = cells([-1.0, 0.0], [0.0, 0.0])  # k=1: image 0 bg mean 0
    H[1, 1] = cells([0.0, -1.0], [0.0, 1.0])  # k=1: image 1 bg mean 0 → baseline 0, concepts: H < -0.2
    p = per_image_metrics(NetInput(H, fg, D_at=np.array([0.0, 4.0]), allowed=np.ones(2, bool)), 0.2)
    assert p.baseline.tolist() == [0.0, 0.0]
    assert p.n_fg.tolist() == [[0, 1], [0, 0]] and p.n_bg.tolist() == [[0, 0], [0, 1]]
    assert p.fg_ratio.tolist() == [1.0, 0.0]
    assert p.mhat.tolist() == [1, 0] and p.D.tolist() == [4.0, 0.0]
    assert p.rho.tolist() == [1.0, 0.0] and p.rho_bg.tolist() == [0.0, 1.0] and p.rho_total.tolist() == [1.0, 1.0]
    s = summarise(p)
    assert s["N_fg"] == 0.5 and s["N_bg"] == 0.5 and s["lambda"] == 0.5
    assert s["D_mean"] == 2.0 and s["D_std"] == 2.0 and s["D_var"] == 4.0  # ddof 0
    assert s["rho"] == 0.5 and s["rho_bg"] == 0.5 and s["rho_total"] == 1.0
    # background peaks: image 0 has none (first max = checkpoint 0, D 0), image 1 at checkpoint 1 (D 4)
    assert p.mhat_bg.tolist() == [0, 1] and p.D_bg.tolist() == [0.0, 4.0]
    assert s["D_mean_bg"] == 2.0 and s["D_var_bg"] == 4.0
    # slopes N(m̂)/D(m̂): image 0: 1/4; image 1 peaks at epoch 0 with D = 0 → left out by default
    assert p.slope[0] == 0.25 and math.isnan(p.slope[1])  # 0/0
    assert s["slope"] == 0.25 and p.slope_left_out == (1, 1)
    assert s["slope_bg"] == 0.25  # image 1: 1/4; image 0 (0/0) left out


def test_bootstrap_is_reproducible_and_contains_the_point_estimate():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 40), rng.normal(0.5, 1, 40)

    def stat(idx_a, idx_b):
        return np.array([b[idx_b].mean() - a[idx_a].mean()])

    p1, r1 = bootstrap(stat, 40, 40, 300, seed=7)
    p2, r2 = bootstrap(stat, 40, 40, 300, seed=7)
    _, r3 = bootstrap(stat, 40, 40, 300, seed=8)
    assert np.array_equal(r1, r2) and not np.array_equal(r1, r3)
    lo, hi = percentile_interval(r1)
    assert lo[0] < p1[0] < hi[0]
    assert p1[0] == pytest.approx(b.mean() - a.mean())
    point, mlo, mhi = mean_interval(a, 200, seed=1)
    assert mlo < point < mhi
    with pytest.raises(ValueError):
        percentile_interval(r1, 1.5)
    # paired: one resample for both; unpaired: each side on its own (other sizes allowed)
    seen = []
    bootstrap(lambda i, j: seen.append((i.copy(), j.copy())) or np.zeros(1), 5, 5, 3, seed=0)
    assert all(np.array_equal(i, j) for i, j in seen[1:])
    seen.clear()
    bootstrap(lambda i, j: seen.append((i.copy(), j.copy())) or np.zeros(1), 5, 7, 3, seed=0, paired=False)
    assert all(len(i) == 5 and len(j) == 7 for i, j in seen)
    with pytest.raises(ValueError, match="as many images"):
        bootstrap(lambda i, j: np.zeros(1), 5, 7, 3, seed=0)


def test_compare_rows_intervals_and_directions():
    rng = np.random.default_rng(0)
    n, K, g = 12, 3, 4
    fg = np.zeros((n, g, g), dtype=bool)
    fg[:, 1:3, 1:3] = True
    H_label = rng.normal(0, 0.3, (n, K, g, g))
    H_distil = H_label.copy()
    H_distil[:, :, 1:3, 1:3] -= 1.0  # the distil net discards less on the foreground: more fg concepts
    D = np.array([0.0, 1.0, 3.0])
    allowed = np.ones(K, dtype=bool)
    c1 = compare_nets(NetInput(H_label, fg, D, allowed), NetInput(H_distil, fg, D, allowed), 0.2, 200, seed=5)
    c2 = compare_nets(NetInput(H_label, fg, D, allowed), NetInput(H_distil, fg, D, allowed), 0.2, 200, seed=5)
    assert repr(c1.rows) == repr(c2.rows)  # NaN-safe equality
    rows = {r["metric"]: r for r in c1.rows}
    assert list(rows)[:6] == ["N_fg", "N_bg", "lambda", "D_mean", "D_std", "rho"]
    assert rows["N_fg"]["difference"] > 0 and rows["N_fg"]["holds"] is True
    assert rows["rho_bg"]["predicted"] is None and rows["rho_bg"]["holds"] is None
    for r in c1.rows:
        if not math.isfinite(r["difference"]):
            continue
        assert r["difference"] == pytest.approx(r["distil"] - r["label"])
        lo, hi = r["difference_ci"]
        assert lo <= r["difference"] + 1e-12 and r["difference"] - 1e-12 <= hi, r
    # point values equal the plain per-net computation
    p = per_image_metrics(NetInput(H_distil, fg, D, allowed), 0.2)
    assert rows["N_fg"]["distil"] == pytest.approx(summarise(p)["N_fg"])
    assert len(c1.curves["label"]["n_fg_mean"]) == K
    # a schedule of its own for one net: its curves have its length
    c3 = compare_nets(NetInput(H_label[:, :2], fg, D[:2], allowed[:2]), NetInput(H_distil, fg, D, allowed), 0.2, 20, 5)
    assert len(c3.curves["label"]["n_fg_mean"]) == 2 and len(c3.curves["distil"]["n_fg_mean"]) == K


def test_verdict_says_supported_only_when_the_interval_excludes_0():
    from kdq.function.metrics.measures import verdict

    assert verdict(+1, 0.5, 0.1, 0.9) == "supported"
    assert verdict(+1, 0.5, -0.1, 0.9) == "same sign, not significant"
    assert verdict(-1, -0.5, -0.9, -0.1) == "supported"
    assert verdict(-1, -0.5, -0.9, 0.0) == "same sign, not significant"  # an interval touching 0 includes it
    assert verdict(+1, -0.5, -0.9, -0.1) == "opposite, significant"
    assert verdict(+1, -0.5, -0.9, 0.1) == "opposite sign, not significant"
    assert verdict(+1, 0.0, -0.1, 0.1) == "no difference"
    assert verdict(0, 0.5, 0.1, 0.9) is None and verdict(+1, float("nan"), 0, 1) == "undetermined"


def test_metrics_json_has_no_nan():
    from kdq.function.metrics.report import finite_or_none
    assert finite_or_none({"a": [1.0, float("nan")], "b": (float("inf"), 2), "c": "x"}) == \
        {"a": [1.0, None], "b": [None, 2], "c": "x"}
