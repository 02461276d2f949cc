"""function/sigma/units.py and kdq.fit_sigma for tokens and point clouds: the σ fit over units (docs/method.md,
"Units beyond images"): closed form on linear models, padding never a unit, relative scale, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import kdq
from kdq.function.checks import CheckError
from kdq.function.sigma.fit import SigmaConfig, SigmaFitter
from kdq.function.sigma.units import Points, Tokens, masked_mean_entropy, unit_scale

HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)  # a literal of the formula, not the module's constant

pytestmark = pytest.mark.usefixtures("one_thread")


def identity(t):
    return t


class TokenLinear(nn.Module):
    """ids (B, L) → embed (B, L, D) → a linear map of the flattened embeddings (the tap ``lin``)."""

    def __init__(self, vocab: int, length: int, dim: int, features: int, seed: int = 0, unit_gain=None):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.embed.weight.data = torch.randn(vocab, dim, generator=gen)
        self.lin = nn.Linear(length * dim, features, bias=False)
        W = torch.randn(features, length, dim, generator=gen)
        if unit_gain is not None:
            W = W * torch.as_tensor(unit_gain, dtype=torch.float32)[None, :, None]
        self.lin.weight.data = W.reshape(features, -1)

    def forward(self, ids):
        return self.lin(self.embed(ids).flatten(1))


class PointLinear(nn.Module):
    """points (B, P, 3) → a linear map of the flattened coordinates (the tap ``lin``)."""

    def __init__(self, points: int, features: int, seed: int = 0, unit_gain=None):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        W = torch.randn(features, points, 3, generator=gen)
        if unit_gain is not None:
            W = W * torch.as_tensor(unit_gain, dtype=torch.float32)[None, :, None]
        self.lin = nn.Linear(points * 3, features, bias=False)
        self.lin.weight.data = W.reshape(features, -1)

    def forward(self, points):
        return self.lin(points.flatten(1))


def unit_norms(W: torch.Tensor, units: int) -> torch.Tensor:
    """c_u: the squared column norms of W summed over unit u's dimensions."""
    return (W.reshape(W.shape[0], units, -1) ** 2).sum((0, 2))


def optimum(c: torch.Tensor, valid: torch.Tensor, lam: float, sigma0: float, sigma_f2: float, exact_f2: float):
    """σ_u = sqrt(λ σ₀² C / (2 G c_u)) over the G valid units (C = Σ_valid c_u), for the exact σ_f² = σ₀² s² C / F;
    rescaled for the estimated σ_f² (the optimum uses the estimate).  The scale s cancels: σ is relative."""
    C, G = float(c[valid].sum()), int(valid.sum())
    return torch.sqrt(lam * sigma0 ** 2 * C / (2 * G * c[valid])).numpy() * math.sqrt(sigma_f2 / exact_f2)


# few units each carry a large share of ‖W‖²: the loss is steep in each σ (curvature 2·c_u / (σ₀²·C), ~100 here), so
# the step is smaller than the image test's (lr 0.02 oscillates out of the basin)
CLOSED = SigmaConfig(samples=64, steps=300, break_steps=0, lr=0.005, sigma0=0.1, lam=1.0)


# ---- the pieces ----------------------------------------------------------------------------------
def test_unit_scale_is_the_std_about_each_dimensions_mean_over_valid_units():
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0], [100.0, -50.0]])
    # valid rows 0, 1: dimension means (2, 2); deviations ±1 and ±2 → mean square (1 + 1 + 4 + 4) / 4 = 2.5
    assert float(unit_scale(x, torch.tensor([True, True, False]))) == pytest.approx(math.sqrt(2.5))
    assert float(unit_scale(x[:1])) == 0.0
    assert float(unit_scale(x, torch.zeros(3, dtype=torch.bool))) == 0.0


def test_masked_mean_entropy_ignores_padding():
    sigma = torch.tensor([1.0, math.exp(-2.0), 123.0])
    valid = torch.tensor([True, True, False])
    assert float(masked_mean_entropy(sigma, valid)) == pytest.approx(-1.0 + HALF_LOG_2PIE, abs=1e-6)
    assert float(masked_mean_entropy(sigma[:2], None)) == pytest.approx(-1.0 + HALF_LOG_2PIE, abs=1e-6)


# ---- the closed form -----------------------------------------------------------------------------
def test_closed_form_optimum_for_points():
    P, F = 6, 5
    gain = torch.tensor([1.6, 1.6, 1.0, 1.0, 0.7, 0.7])  # points of different sensitivity
    model = PointLinear(P, F, unit_gain=gain)
    W = model.lin.weight.detach()
    c = unit_norms(W, P)
    clouds = torch.randn(2, P, 3, generator=torch.Generator().manual_seed(5)) * 4.0 + 2.0  # not unit scale
    fits = kdq.fit_sigma(model, "lin", clouds, config=CLOSED, seeds=[1, 2], activation=identity, units="points")
    for cloud, fit in zip(clouds, fits):
        s = float(unit_scale(cloud))
        exact_f2 = CLOSED.sigma0 ** 2 * s ** 2 * float(c.sum()) / F
        assert fit.sigma_f2 == pytest.approx(exact_f2, rel=0.25)  # an estimate from n · F = 320 squares
        fitted = fit.fit.history[-150:].mean(0)
        np.testing.assert_allclose(fitted, optimum(c, torch.ones(P, dtype=torch.bool), 1.0, 0.1, fit.sigma_f2,
                                                   exact_f2), rtol=0.05)
        assert fit.sigma.shape == (P,) and fit.fit.history.shape == (300, P)


def test_closed_form_optimum_for_tokens_with_padding():
    L, D, F = 5, 4, 6
    model = TokenLinear(vocab=10, length=L, dim=D, features=F, unit_gain=[1.5, 1.0, 0.6, 1.0, 1.0])
    W = model.lin.weight.detach()
    c = unit_norms(W, L)
    ids = torch.tensor([[3, 4, 5, 0, 0], [7, 2, 9, 1, 6]])  # the first sentence is padded after 3 tokens
    fits = kdq.fit_sigma(model, "lin", ids, config=CLOSED, seeds=[1, 2], activation=identity,
                         units=kdq.Tokens(embedding="embed"))
    for row, fit in zip(ids, fits):
        valid = row != 0
        emb = model.embed(row).detach()
        s = float(unit_scale(emb, valid))
        exact_f2 = CLOSED.sigma0 ** 2 * s ** 2 * float(c[valid].sum()) / F
        assert fit.sigma_f2 == pytest.approx(exact_f2, rel=0.25)  # an estimate from n · F = 320 squares
        fitted = fit.fit.history[-150:].mean(0)
        np.testing.assert_allclose(fitted[valid.numpy()], optimum(c, valid, 1.0, 0.1, fit.sigma_f2, exact_f2),
                                   rtol=0.05)
        # padding is never a unit: no noise, no entropy, reported as NaN
        assert np.isnan(fit.sigma[~valid.numpy()]).all() and np.isnan(fit.entropy_map[~valid.numpy()]).all()
        np.testing.assert_array_equal(fit.fit.valid, valid.numpy())


def test_padding_does_not_change_a_token_fit():
    """The same sentence fitted padded or not: padding takes no noise (the noisy block is the same), so the
    real tokens' σ agree to float rounding."""
    L, D, F = 4, 3, 5
    model = TokenLinear(vocab=8, length=L, dim=D, features=F)
    cfg = SigmaConfig(samples=8, steps=12, break_steps=0, lr=0.01, sigma0=0.05, lam=2.0)
    ids = torch.tensor([[2, 5, 0, 0]])
    padded = kdq.fit_sigma(model, "lin", ids, config=cfg, activation=identity, units="tokens")[0]
    # the same sentence with its padding marked by an explicit mask instead of pad_id: identical
    masked = kdq.fit_sigma(model, "lin", ids, config=cfg, activation=identity,
                           units=kdq.Tokens(mask=torch.tensor([[1, 1, 0, 0]]), pad_id=None))[0]
    np.testing.assert_array_equal(padded.sigma, masked.sigma)
    assert padded.sigma_f2 == masked.sigma_f2


def test_relative_sigma_does_not_depend_on_the_inputs_scale():
    """σ is relative to each input's scale: for a positively homogeneous layer (ReLU of a linear map without bias) a
    cloud ×10 gets the same σ* (to float rounding); absolute noise (Points(scale=1.0)) does not.  (For a linear h
    both would: MSE / σ_f² does not depend on the scale there.)"""
    P = 5
    model = PointLinear(P, 8)
    cfg = SigmaConfig(samples=16, steps=20, break_steps=0, lr=0.01, sigma0=0.05, lam=2.0)
    cloud = torch.randn(1, P, 3, generator=torch.Generator().manual_seed(2))
    small = kdq.fit_sigma(model, "lin", cloud, config=cfg, units="points")[0]
    large = kdq.fit_sigma(model, "lin", cloud * 10, config=cfg, units="points")[0]
    np.testing.assert_allclose(small.sigma, large.sigma, rtol=1e-4)
    absolute = kdq.fit_sigma(model, "lin", cloud * 10, config=cfg, units=kdq.Points(scale=1.0))[0]
    assert not np.allclose(absolute.sigma, large.sigma, rtol=1e-2)


def test_fitter_batches_unit_inputs_bit_identically():
    P = 4
    model = PointLinear(P, 3)
    cfg = SigmaConfig(samples=6, steps=8, break_steps=3, lr=0.01, sigma0=0.05, lam=3.0)
    clouds = torch.randn(3, P, 3, generator=torch.Generator().manual_seed(4))
    fitter = SigmaFitter(lambda x: model.lin(x.flatten(1)), cfg, activation=identity)
    together = fitter.fit(clouds, [1, 2, 3], units=Points())
    alone = [fitter.fit(clouds[i:i + 1], [i + 1], units=Points())[0] for i in range(3)]
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a.sigma, b.sigma)
        assert a.sigma_f2 == b.sigma_f2


def test_region_read_by_the_layer_gets_low_entropy_for_points():
    """h reads the first two points only: noise elsewhere is free, so σ grows there."""
    P = 6
    model = PointLinear(P, 8, unit_gain=[1, 1, 0, 0, 0, 0])
    cfg = SigmaConfig(samples=16, steps=200, break_steps=0, lr=0.0005, sigma0=0.05, lam=4.0, target_entropy=0.0)
    cloud = torch.randn(1, P, 3, generator=torch.Generator().manual_seed(0))
    fg = np.array([[1, 1, 0, 0, 0, 0]])
    fit = kdq.fit_sigma(model, "lin", cloud, fg, config=cfg, seeds=[3], activation=identity, units="points")[0]
    assert fit.entropy_map[2:].min() > fit.entropy_map[:2].max() + 0.5
    assert fit.bg_minus_fg > 0 and fit.effective


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, units, message", [
    (torch.tensor([[0, 0, 0, 0], [1, 2, 3, 0]]), "tokens", r"inputs\[0\] is an empty sequence"),
    (torch.ones(2, 4), "tokens", "integer token ids"),
    (torch.ones(2, 4, dtype=torch.long), kdq.Tokens(embedding="nope"), "no submodule 'nope'"),
    (torch.ones(2, 9, dtype=torch.long), "tokens", "at most 4"),
])
def test_bad_token_inputs_are_one_line_errors(ids, units, message):
    model = TokenLinear(vocab=8, length=4, dim=3, features=2)
    model.max_length = 4
    with pytest.raises((CheckError, TypeError), match=message):
        kdq.fit_sigma(model, "lin", ids, units=units)


def test_bad_foreground_and_points_are_one_line_errors():
    model = PointLinear(4, 2)
    good = torch.zeros(2, 4, 3)
    cases = [
        (dict(inputs=torch.full((2, 4, 3), float("nan"))), r"inputs\[0\] holds NaN"),
        (dict(inputs=torch.zeros(2, 0, 3)), "zero points"),
        (dict(inputs=torch.zeros(2, 4, 2)), r"\(N, P, 3\)"),
        (dict(inputs=good, foreground=np.ones((2, 5))), "5 flags per input but the inputs have 4 units"),
        (dict(inputs=good, foreground=np.ones((3, 4))), r"\(N, U\) = \(2, 4\)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(CheckError, match=message):
            kdq.fit_sigma(model, "lin", units="points", **kwargs)
    tokens = TokenLinear(vocab=8, length=4, dim=3, features=2)
    with pytest.raises(CheckError, match=r"foreground\[0\] marks padding as foreground"):
        kdq.fit_sigma(tokens, "lin", torch.tensor([[1, 2, 0, 0]]), np.array([[0, 1, 1, 0]]), units="tokens")
    with pytest.raises(CheckError, match="units: units must be one of"):
        kdq.fit_sigma(model, "lin", good, units="pixels")


# ---- compare on unit maps ------------------------------------------------------------------------
def unit_maps() -> tuple[np.ndarray, np.ndarray]:
    """Two inputs of 4 units (the second padded after 3), 2 checkpoints, maps given by their entropies."""
    last = np.array([[-3, -1.5, 0, 0], [-3, -3, 0, np.nan]])
    first = np.array([[0, 0, 0, 0], [0, 0, 0, np.nan]])
    return np.exp(np.stack([first, last], axis=1) - HALF_LOG_2PIE), np.array([[1, 1, 0, 0], [1, 0, 0, 0]])


def test_compare_on_unit_maps_counts_concepts_by_hand():
    """Last checkpoint: background means 0 (input 0: units 2, 3) and −1.5 (input 1: units 1, 2; the padded unit is
    no background), H̄_bg = −0.75; with b = 1 a concept has H < −1.75: input 0 unit 0 (fg), input 1 units 0 (fg) and
    1 (bg).  N_fg = 1, N_bg = 0.5, λ = mean(1/1, 1/2) = 0.75.  (Padding counted as background would leave input 1
    out of H̄_bg, = 0, and make input 0's unit 1 a concept: N_fg = 1.5.)"""
    maps, fg = unit_maps()
    with pytest.warns(UserWarning, match="only 2 images"):
        result = kdq.compare(maps, maps, fg, [0, 1.0], [0, 1.0], b=1.0, n_boot=20, units="tokens")
    label = result.summary["label"]
    assert (label["N_fg"], label["N_bg"], label["lambda"]) == (1.0, 0.5, 0.75)


def test_compare_on_unit_maps_rejects_inconsistent_padding_and_flags():
    maps, fg = unit_maps()
    moved = maps.copy()
    moved[1, 0, 3] = 1.0  # a unit at one checkpoint only
    for label, masks, message in [
        (moved, fg, "NaN on the same units"),
        (maps, fg[:, :3], r"masks must be \(N, U\) = \(2, 4\)"),
        (maps, np.array([[1, 1, 0, 0], [1, 0, 0, 1]]), r"masks\[1\] marks padding as foreground"),
    ]:
        with pytest.raises(CheckError, match=message):
            kdq.compare(label, maps, masks, [0, 1.0], [0, 1.0], n_boot=20, units="points")
    with pytest.raises(CheckError, match="units must be one of"):
        kdq.compare(maps, maps, fg, [0, 1.0], [0, 1.0], units="pixels")


def test_an_input_of_zero_scale_takes_no_noise_and_fails_as_sigma_f2_zero():
    """One token, one repeated token, coincident points: s = 0, so σ_f² = 0 exactly (not rounding's 1e-17)."""
    tokens = TokenLinear(vocab=8, length=4, dim=3, features=5)
    ids = torch.tensor([[3, 0, 0, 0], [2, 2, 2, 2], [1, 2, 3, 4]])
    fits = kdq.fit_sigma(tokens, "lin", ids, config=SigmaConfig(samples=4, steps=4, break_steps=1),
                         activation=identity, units="tokens")
    assert [f.sigma_f2 == 0.0 for f in fits] == [True, True, False]
    assert fits[0].fit.failed and fits[1].fit.failed and not fits[2].fit.failed
    points = PointLinear(4, 3)
    same = torch.ones(1, 4, 3) * torch.tensor([0.3, -1.0, 2.0])
    fit = kdq.fit_sigma(points, "lin", same, config=SigmaConfig(samples=4, steps=4, break_steps=1),
                        activation=identity, units="points")[0]
    assert fit.sigma_f2 == 0.0 and fit.fit.failed


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), "abc", True])
def test_a_bad_fixed_scale_is_a_one_line_error(scale):
    with pytest.raises(CheckError, match="units.scale must be a positive number"):
        kdq.Points(scale=scale)


def test_token_ids_beyond_the_embedding_are_a_one_line_error():
    model = TokenLinear(vocab=8, length=4, dim=3, features=2)
    with pytest.raises(CheckError, match=r"token id 9; 'embed' has ids 0...7"):
        kdq.fit_sigma(model, "lin", torch.tensor([[1, 9, 2, 3]]), units="tokens")
