"""function/sigma/ (fit, effective, entropy, grid, selection): the σ fit of docs/method.md §2 on tiny feature maps (closed form, region, logic, batching)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdq.function.sigma.effective import drop_reason, entropy_gap, keeps_image
from kdq.function.sigma.entropy import mean_entropy
from kdq.function.sigma.fit import SigmaConfig, SigmaFitter, reached_target, select_step
from kdq.function.sigma.grid import upsample
from kdq.function.sigma.selection import EFFECTIVE, NON_EFFECTIVE, PENDING, draw_order, name_lists, next_round

HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)  # a literal of the formula, not the module's constant


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_map(S: int, F: int, seed: int = 0, region_scale=None) -> tuple[torch.Tensor, callable]:
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(F, 3 * S * S, generator=gen)
    if region_scale is not None:
        W = W * region_scale.reshape(1, -1)
    return W, (lambda x: x.reshape(x.shape[0], -1) @ W.T)


def identity(t):
    return t


def images(n: int, S: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, S, S, generator=torch.Generator().manual_seed(seed))


# ---- the closed form ---------------------------------------------------------------------------------
def test_closed_form_optimum_of_a_linear_map():
    """With h linear, E[L] = Σ σᵢ² cᵢ / (F σ_f²) − λ/G Σ log σᵢ, so σᵢ² = λ·F·σ_f² / (2·G·cᵢ), which is
    λ·σ₀²·C / (2·G·cᵢ) for the exact σ_f² = σ₀²·C/F.  cᵢ: squared column norms summed over cell i."""
    S, g, F = 8, 4, 6
    scale = torch.ones(3, S, S)
    scale[:, :4, :4], scale[:, 4:, 4:] = 1.6, 0.8  # cells of different sensitivity
    W, feature = linear_map(S, F, region_scale=scale)
    c = (W ** 2).sum(0).reshape(3, S, S).sum(0).reshape(g, S // g, g, S // g).sum((1, 3))
    C, G, lam, s0 = c.sum(), g * g, 1.0, 0.1
    exact = torch.sqrt(lam * s0 ** 2 * C / (2 * G * c)).numpy()
    cfg = SigmaConfig(grid=g, samples=64, steps=150, break_steps=0, lr=0.02, sigma0=s0, lam=lam)
    fits = SigmaFitter(feature, cfg, activation=identity).fit(images(2, S), seeds=[1, 2])
    for fit in fits:
        # σ_f² is itself estimated from n samples; the optimum uses the estimate
        assert fit.sigma_f2 == pytest.approx(s0 ** 2 * float(C) / F, rel=0.1)
        optimum = exact * math.sqrt(fit.sigma_f2 / (s0 ** 2 * float(C) / F))
        fitted = fit.history[-75:].mean(0)  # SGD with fresh noise: average the last half
        np.testing.assert_allclose(fitted, optimum, rtol=0.04)
        assert fit.steps_run == 150 and fit.history.shape == (150, g, g)


def test_region_dependent_feature_gets_low_entropy_only_there():
    """h reads only the top-left quadrant: noise elsewhere is free, so σ grows there (high entropy)."""
    S, g = 16, 4
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(32, 3 * 8 * 8, generator=gen)

    def feature(x):
        return x[:, :, :8, :8].reshape(x.shape[0], -1) @ W.T

    cfg = SigmaConfig(grid=g, samples=16, steps=40, break_steps=0, lr=0.002, sigma0=0.05, lam=4.0,
                      target_entropy=0.0)
    fit = SigmaFitter(feature, cfg).fit(images(1, S), seeds=[3])[0]
    h = np.log(fit.sigma) + HALF_LOG_2PIE
    inside, outside = h[:2, :2], np.concatenate([h[2:].ravel(), h[:2, 2:].ravel()])
    assert outside.min() > inside.max() + 0.5
    region = np.zeros((g, g), bool)
    region[:2, :2] = True
    assert keeps_image(entropy_gap(fit.sigma, region))
    assert not keeps_image(entropy_gap(fit.sigma, ~region))


# ---- the step logic ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seq, target, stop", [
    ([-3.5, -3.2, -3.0], -2.8, False),  # target never exceeded: escalate λ
    ([-3.5, -2.7, -3.0], -2.8, True),  # exceeded once, earlier: stop
    ([-2.8, -2.8], -2.8, False),  # equal is not "exceeds"
    ([np.nan, -2.0], -2.8, True),
    ([np.nan, np.nan], -2.8, False),
])
def test_stop_decision_on_scripted_entropies(seq, target, stop):
    column = torch.tensor(seq, dtype=torch.float32)[:, None]  # (steps, one image)
    assert reached_target(column, target).tolist() == [stop]


@pytest.mark.parametrize("seq, target, best", [
    ([-3.0, -2.75, -2.25, -2.0], -2.5, 1),  # two steps 0.25 away (exact in binary): the first one wins
    ([-4.0, -3.0, -2.81, -2.5], -2.8, 2),
    ([-4.0, -3.0, np.nan, np.nan], -2.8, 1),  # steps not run are never chosen
    ([np.nan, np.nan], -2.8, -1),
])
def test_select_step_nearest_target_first_on_ties(seq, target, best):
    assert select_step(np.array(seq), target) == best


def _fit_linear(target, steps=8, break_steps=3, lam=1.0, n=2, seed=0):
    S, g = 8, 2
    _, feature = linear_map(S, 4, seed=seed)
    cfg = SigmaConfig(grid=g, samples=4, steps=steps, break_steps=break_steps, lr=1e-3, sigma0=0.1, lam=lam,
                      target_entropy=target)
    return SigmaFitter(feature, cfg, activation=identity).fit(images(n, S), seeds=list(range(n)))


def test_fit_stops_at_decision_when_target_exceeded_and_escalates_otherwise():
    d = 8 - 3 - 1
    # H̄ starts at log 0.1 + 1.42 ≈ −0.88: above a target of −5, so stop after step d
    for fit in _fit_linear(target=-5.0):
        assert fit.steps_run == d + 1 and fit.final_lambda == 1.0
        assert np.isfinite(fit.entropy[: d + 1]).all() and np.isnan(fit.entropy[d + 1:]).all()
        assert np.isnan(fit.feature_loss[d + 1:]).all() and np.isnan(fit.penalty_loss[d + 1:]).all()
        assert fit.best_step == int(np.argmin(np.abs(fit.entropy[: d + 1] + 5.0)))
        np.testing.assert_array_equal(fit.sigma, fit.history[fit.best_step])
    # a target above every reachable entropy: λ ← 1.5 λ after step d and run to the end
    for fit in _fit_linear(target=5.0):
        assert fit.steps_run == 8 and fit.final_lambda == 1.5
        assert np.isfinite(fit.entropy).all()
        np.testing.assert_allclose(fit.penalty_loss[: d + 1], -1.0 * fit.entropy[: d + 1], rtol=1e-6)
        np.testing.assert_allclose(fit.penalty_loss[d + 1:], -1.5 * fit.entropy[d + 1:], rtol=1e-6)


def test_records_are_the_sigma_used_at_each_step_clamped():
    fit = _fit_linear(target=5.0, lam=50.0, n=1)[0]  # a large λ pushes σ against the upper clamp quickly
    assert fit.history.max() <= 1.0 and fit.history.min() >= 1e-3
    np.testing.assert_allclose(fit.entropy[: fit.steps_run], np.log(fit.history).mean((1, 2)) + HALF_LOG_2PIE,
                               rtol=1e-5)
    np.testing.assert_allclose(fit.history[0], 0.1)  # σ₀ at step 0


def test_zero_sigma_f_is_a_failed_fit():
    cfg = SigmaConfig(grid=2, samples=2, steps=3, break_steps=1)
    fit = SigmaFitter(lambda x: torch.zeros(x.shape[0], 5), cfg).fit(images(1, 4), seeds=[0])[0]
    assert fit.sigma_f2 == 0 and fit.failed and fit.steps_run == 0
    assert (fit.sigma == 0).all() and np.isnan(fit.entropy).all()


# ---- batching, chunking, seeding -----------------------------------------------------------------------
def test_batched_fit_equals_fitting_each_image_alone():
    S, g = 8, 2
    _, feature = linear_map(S, 16)
    relu_feature = lambda x: feature(x) - 2.0  # some elements cut by the ReLU  # noqa: E731
    cfg = SigmaConfig(grid=g, samples=6, steps=10, break_steps=4, lr=1e-3, sigma0=0.05, target_entropy=-1.5)
    x = images(3, S)
    seeds, lam = [11, 12, 13], [20.0, 0.1, 20.0]  # a large λ raises H̄ above the target: stop at step 5
    together = SigmaFitter(relu_feature, cfg).fit(x, seeds, lam)
    alone = [SigmaFitter(relu_feature, cfg).fit(x[i:i + 1], seeds[i:i + 1], lam[i:i + 1])[0] for i in range(3)]
    swapped = SigmaFitter(relu_feature, cfg).fit(x.flip(0), seeds[::-1], lam[::-1])[::-1]
    chunked = SigmaFitter(relu_feature, cfg.with_(sample_chunk=4)).fit(x, seeds, lam)
    assert [f.steps_run for f in together] == [6, 10, 6]  # independent stopping inside one batch
    for a, b, c, d in zip(together, alone, swapped, chunked):
        # on the CPU an image's numbers do not depend on its batch (nor its place in it): bit-identical
        for other in (b, c):
            assert (a.best_step, a.steps_run, a.final_lambda) == (other.best_step, other.steps_run,
                                                                  other.final_lambda)
            for field in ("sigma", "entropy", "feature_loss", "penalty_loss", "history"):
                np.testing.assert_array_equal(getattr(a, field), getattr(other, field))
            assert a.sigma_f2 == other.sigma_f2
        # chunking the samples only changes the summation order
        assert a.best_step == d.best_step and a.steps_run == d.steps_run
        np.testing.assert_allclose(a.sigma, d.sigma, rtol=1e-5)
        # H̄ is a mean of log σ: σ within rtol 1e-5 puts it within atol 1e-5 (a relative test fails near H̄ = 0;
        # seen on an AMD EPYC: 5.7e-6 apart at H̄ = -0.44)
        np.testing.assert_allclose(a.entropy, d.entropy, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.feature_loss, d.feature_loss, rtol=1e-4)
        # σ_f² is a mean of (h(x + σ₀ε) − h(x))², a difference of nearby values: the matmul of another batch size
        # (other kernels) moves it by more than float32's step (seen on an AMD EPYC: 1.5e-5 relative), as feature_loss
        assert a.sigma_f2 == pytest.approx(d.sigma_f2, rel=1e-4)


def test_amp_and_channels_last_paths_run():
    S = 8
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    conv.requires_grad_(False)
    cfg = SigmaConfig(grid=2, samples=4, steps=3, break_steps=1, sigma0=0.1)
    x = images(1, S)
    base = SigmaFitter(conv, cfg).fit(x, seeds=[0])[0]
    cl = SigmaFitter(conv, cfg.with_(channels_last=True)).fit(x, seeds=[0])[0]
    amp = SigmaFitter(conv, cfg.with_(amp="bf16")).fit(x, seeds=[0])[0]  # CPU autocast here; CUDA in use
    np.testing.assert_allclose(base.entropy, cl.entropy, rtol=1e-5)
    assert amp.steps_run == base.steps_run and np.isfinite(amp.entropy[:amp.steps_run]).all()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="break_steps"):
        SigmaConfig(steps=5, break_steps=5)
    with pytest.raises(ValueError, match="samples"):
        SigmaConfig(samples=0)


def test_upsample_is_nearest_and_shared_across_channels():
    s = torch.arange(4.0).reshape(1, 2, 2)
    up = upsample(s, 4)
    assert up.shape == (1, 4, 4) and up[0, 0, 1] == 0 and up[0, 0, 2] == 1 and up[0, 3, 3] == 3
    uneven = upsample(s, 5)  # uneven cells (AlexNet's 227 px): F.interpolate nearest
    assert uneven.shape == (1, 5, 5) and uneven[0, 4, 4] == 3
    assert mean_entropy(torch.full((1, 2, 2), 1.0)).item() == pytest.approx(HALF_LOG_2PIE)


# ---- effective rule, masks, draw and name lists --------------------------------------------------------
def test_effective_rule():
    fg = np.zeros((4, 4), bool)
    fg[1:3, 1:3] = True
    sigma = np.full((4, 4), 0.5)
    sigma[fg] = 0.01  # foreground keeps information: low entropy there
    assert entropy_gap(sigma, fg) == pytest.approx(math.log(0.5) - math.log(0.01))
    assert keeps_image(entropy_gap(sigma, fg))
    assert not keeps_image(entropy_gap(1 / sigma, fg))  # background below foreground
    assert keeps_image(entropy_gap(np.full((4, 4), 0.2), fg))  # a gap of exactly 0 is kept (rule: < 0)
    assert not keeps_image(entropy_gap(np.zeros((4, 4)), fg))  # failed fit: NaN gap
    assert not keeps_image(entropy_gap(sigma, np.zeros((4, 4), bool)))  # no foreground cell: NaN


def test_drop_reason_applies_the_rule_from_its_start_epoch():
    nan = float("nan")
    assert drop_reason(0.0, 1.0, epoch=5, start=40).startswith("sigma_f2 = 0.0")  # σ_f² = 0: always dropped
    assert drop_reason(nan, 1.0, epoch=5, start=40).startswith("sigma_f2 = nan")
    assert drop_reason(0.5, -0.1, epoch=39, start=40) is None  # before the rule's start: kept
    assert "background entropy below foreground at epoch 40" in drop_reason(0.5, -0.1, epoch=40, start=40)
    assert drop_reason(0.5, nan, epoch=40, start=40) is not None  # NaN gap (no fg cell at the grid): dropped
    assert drop_reason(0.5, 0.0, epoch=40, start=40) is None  # a gap of exactly 0 is kept
    assert drop_reason(0.5, -5.0, epoch=90, start=None) is None  # --effective-rule off


def test_draw_is_the_originals_random_sample():
    import random

    random.seed(0)
    assert draw_order(100, 10, pic_seed=0) == random.sample(list(range(100)), 10)
    a = draw_order(100, 10, pic_seed=3)
    assert a == draw_order(100, 10, pic_seed=3) and a != draw_order(100, 10, pic_seed=4) and len(set(a)) == 10
    assert sorted(draw_order(5, 500, pic_seed=0)) == list(range(5))  # the whole split when pic_num ≥ N


def test_name_lists_are_a_prefix_of_the_draw():
    E, N, P = EFFECTIVE, NON_EFFECTIVE, PENDING
    assert name_lists([E, N, E, E, P], 2) == ([0, 2], [1], True)
    assert name_lists([E, N, P, E, E], 2) == ([0], [1], False)  # a gap: not done, later ones not listed
    assert name_lists([N, N, E], 5) == ([2], [0, 1], True)  # draw used up
    assert name_lists([E, E, E, E], 2) == ([0, 1], [], True)  # overshoot is not listed


def test_rounds_hand_fixed_batches_to_ranks():
    P, E = PENDING, EFFECTIVE
    status = [E, E, P, P, P, P, P]
    assert next_round(status, 2, 1) == [[2, 3]]
    assert next_round(status, 2, 2) == [[2, 3], [4, 5]]
    assert next_round(status, 3, 2) == [[2], [3, 4, 5]]  # batches are fixed chunks [0,3) [3,6) [6,7)
    assert next_round([E, E], 2, 2) == [[], []]
