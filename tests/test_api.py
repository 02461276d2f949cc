"""The Python API (issue 16): ``kdq.fit_sigma``, ``kdq.SigmaConfig``, ``kdq.WeightDistance``, ``kdq.compare``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import kdq
from kdq.function.sigma.fit import SigmaFitter
from kdq.models import Tap, truncated
from tests.user_models import GatedNet

HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)  # 1.4189385332...
CONFIG = kdq.SigmaConfig(grid=4, samples=4, steps=6, break_steps=2, lr=1e-3)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def test_the_api_names_are_exported():
    assert {"fit_sigma", "SigmaConfig", "WeightDistance", "compare"} <= set(kdq.__all__)
    assert kdq.SigmaConfig is kdq.function.sigma.fit.SigmaConfig


def test_fit_sigma_is_the_stage_fit_at_a_named_submodule():
    model = small_net().train()
    x = torch.randn(3, 3, 16, 16)
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    fits = kdq.fit_sigma(model, "2", x, masks, CONFIG, seeds=[5, 6, 7])
    assert model.training and all(p.requires_grad for p in model.parameters())  # left as it was
    reference = SigmaFitter(truncated(model, Tap("2", "2.weight")).eval(), CONFIG, "cpu").fit(x, [5, 6, 7])
    for fit, ref in zip(fits, reference):
        assert np.array_equal(fit.sigma, ref.sigma) and fit.steps_run == ref.steps_run
        assert fit.sigma.shape == (4, 4) and fit.best_step == ref.best_step
        np.testing.assert_allclose(fit.entropy_map, np.log(fit.sigma.astype(np.float64)) + HALF_LOG_2PIE, rtol=0, atol=1e-6)
        fg = np.zeros((4, 4), bool)
        fg[1:3, 1:3] = True  # the mask's cells: pixels 4..11 of 16 are cells 1..2 of 4
        expected_gap = fit.entropy_map[~fg].mean() - fit.entropy_map[fg].mean()
        assert fit.bg_minus_fg == pytest.approx(expected_gap, abs=1e-6)
        assert fit.effective == (expected_gap >= 0)
        assert fit.sigma_f2 > 0 and fit.final_lambda in (7.0, 10.5)


def test_fit_sigma_works_where_torch_fx_cannot_trace():
    torch.manual_seed(1)
    fits = kdq.fit_sigma(GatedNet(num_classes=3), "fc1", torch.randn(2, 3, 16, 16), config=CONFIG)
    assert len(fits) == 2 and all(f.sigma.shape == (4, 4) and (f.sigma > 0).all() for f in fits)
    assert all(f.effective is None for f in fits)  # no mask, no verdict


def test_fit_sigma_refuses_images_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, 3, S, S\)"):
        kdq.fit_sigma(small_net(), "2", torch.randn(3, 16, 16), config=CONFIG)


def test_weight_distance_in_a_users_loop():
    model = small_net()
    tracker = kdq.WeightDistance(model, {"conv": "2.weight", "fc3": "6.weight"})
    w0 = model[2].weight.detach().clone()
    with torch.no_grad():
        model[2].weight.add_(0.1)
    tracker.step()
    tracker.end_epoch()
    table = tracker.table
    assert table.shape == (4, 2) and np.isnan(table[1:3]).all()
    assert table[0, 1] == pytest.approx(0.1 * math.sqrt(w0.numel()) / w0.norm().item(), rel=1e-5)
    assert table[3, 1] == 0


def hand_maps(n: int = 5):
    """n images, grid 2, 2 checkpoints; the foreground is cell (0, 0).  Label net: σ = 1 everywhere (no concept).
    Distil net: at checkpoint 1 the foreground cell has σ = e^-1, i.e. H 1 below the background (a concept)."""
    fg = np.zeros((n, 2, 2), bool)
    fg[:, 0, 0] = True
    label = np.ones((n, 2, 2, 2))
    distil = np.ones((n, 2, 2, 2))
    distil[:, 1, 0, 0] = math.exp(-1)
    return label, distil, fg


def test_compare_on_hand_computed_maps(tmp_path):
    label, distil, fg = hand_maps(12)
    with pytest.warns(UserWarning, match="label net has no visual concept"):
        result = kdq.compare(label, distil, fg, D_label=[0.0, 0.3], D_distil=[0.0, 0.5], n_boot=50)
    rows = {row["metric"]: row for row in result.rows}
    expected = {"N_fg": (0, 1), "N_bg": (0, 0), "lambda": (0, 1), "D_mean": (0, 0.5), "D_std": (0, 0), "rho": (0, 1)}
    for metric, (lab, dis) in expected.items():
        assert rows[metric]["label"] == pytest.approx(lab) and rows[metric]["distil"] == pytest.approx(dis), metric
    # every resample gives +1 (N_fg) and +0.5 (D_mean): zero-width intervals carry no verdict
    for metric in ("N_fg", "D_mean"):
        assert rows[metric]["verdict"] is None
        assert rows[metric]["no_verdict"] == "every resample gives the same difference: a zero-width interval"
    assert "N_fg" in result.table()
    report = result.write_report(tmp_path / "report").read_text()
    assert "## Warnings" in report and "label net has no visual concept" in report
    assert "| N_fg | 0 | 1 | +1 [1, 1] | distil > label (↑) | no verdict: every resample" in report.replace("| layer ", "")
    assert "one training run of the label and the distil net" in report


def test_compare_gives_no_verdict_below_ten_images():
    label, distil, fg = hand_maps()
    with pytest.warns(UserWarning) as caught:
        result = kdq.compare(label[:4], distil[:4], fg[:4], [0.0, 0.3], [0.0, 0.5], n_boot=10)
    messages = sorted(str(w.message).split(": ", 1)[1].split(" (")[0] for w in caught)
    assert messages == ["only 4 images enter the comparison", "the label net has no visual concept at any checkpoint"]
    assert all(row["verdict"] is None for row in result.rows)


def test_compare_pools_several_training_runs():
    label, distil, fg = hand_maps(12)
    distil_runs = np.stack([distil, distil, np.ones_like(distil)])  # the third distil run learned nothing
    with pytest.warns(UserWarning, match="distil net \\(run 3 of 3\\) has no visual concept"):
        result = kdq.compare(np.stack([label, label]), distil_runs, fg, [[0.0, 0.3], [0.0, 0.4]],
                             [[0.0, 0.5]] * 3, n_boot=50)
    row = {r["metric"]: r for r in result.rows}["N_fg"]
    assert row["per_run"] == {"label": [0.0, 0.0], "distil": [1.0, 1.0, 0.0]}
    assert row["distil"] == pytest.approx(2 / 3) and row["label"] == 0.0
    assert row["spread"]["distil"] == pytest.approx(np.std([1, 1, 0], ddof=1))
    with pytest.raises(ValueError, match=r"D_label must be \(R, K\), one row per training run \(2\)"):
        kdq.compare(np.stack([label, label]), distil, fg, [0.0, 0.3], [0.0, 0.5], n_boot=5)


@pytest.mark.parametrize("change, message", [
    (lambda l, d, f: (l[:, :, :1], d, f), "label_maps must be"),
    (lambda l, d, f: (l, -d, f), "positive and finite"),
    (lambda l, d, f: (l * np.nan, d, f), "positive and finite"),
])
def test_compare_refuses_bad_maps(change, message):
    label, distil, fg = change(*hand_maps())
    with pytest.raises(ValueError, match=message):
        kdq.compare(label, distil, fg, [0.0, 0.3], [0.0, 0.5], n_boot=10)


def test_compare_refuses_epochs_that_do_not_name_every_checkpoint():
    label, distil, fg = hand_maps()
    with pytest.raises(ValueError, match="epochs_label must name each of the 2 checkpoints, got 3"):
        kdq.compare(label, distil, fg, [0.0, 0.3], [0.0, 0.5], n_boot=10, epochs_label=[0, 2, 5])
