"""weight_diff of docs/method.md §1 against a hand computation on a toy run."""
from __future__ import annotations

import numpy as np
import torch

import pytest

from kdq.function.train.weight_distance import WeightDistance, cumulative_distance, distance_at
from kdq.models import TAPS, analysed_weight, build_model


def registry_weights(arch: str) -> dict[str, str]:
    return {layer: tap.weight for layer, tap in TAPS[arch].items()}


def test_weight_diff_equals_hand_computation():
    torch.manual_seed(0)
    model = build_model("vgg_tiny", num_classes=3)
    tracker = WeightDistance(model, registry_weights("vgg_tiny"))
    weights = [analysed_weight(model, TAPS["vgg_tiny"][l]) for l in ("conv", "fc1", "fc2", "fc3")]
    init_norms = [w.detach().norm().item() for w in weights]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # no momentum: step = -lr * grad
    expected = np.zeros((4, 3))
    g = torch.Generator().manual_seed(1)
    for epoch in (1, 2):
        for _ in range(3):
            opt.zero_grad()
            for p in model.parameters():  # known gradients
                p.grad = torch.randn(p.shape, generator=g)
            for l, w in enumerate(weights):
                expected[l, epoch] += (0.1 * w.grad).norm().item() / init_norms[l]
            opt.step()
            tracker.step()
        tracker.end_epoch()
    assert np.all(tracker.table[:, 0] == 0) and tracker.table.shape == (4, 3)
    np.testing.assert_allclose(tracker.table, expected, rtol=1e-5)
    np.testing.assert_allclose(cumulative_distance(tracker.table)[:, 2], expected.sum(1), rtol=1e-5)


def test_frozen_weight_has_zero_distance():
    torch.manual_seed(0)
    model = build_model("vgg_tiny", num_classes=3)
    tracker = WeightDistance(model, registry_weights("vgg_tiny"))
    fc3 = analysed_weight(model, TAPS["vgg_tiny"]["fc3"])
    fc3.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    tracker.step()
    tracker.end_epoch()
    assert tracker.table[3, 1] == 0 and tracker.table[0, 1] > 0


def test_state_round_trip():
    torch.manual_seed(0)
    model = build_model("resnet_tiny", num_classes=3)
    a = WeightDistance(model, registry_weights("resnet_tiny"))
    a.end_epoch()
    b = WeightDistance(model, registry_weights("resnet_tiny"))
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.table, b.table) and torch.equal(a.init_norm, b.init_norm) and b.epochs_done == 1


def test_untracked_layers_are_nan_rows():
    torch.manual_seed(0)
    model = build_model("vgg_tiny", num_classes=3)
    tracker = WeightDistance(model, {"fc1": TAPS["vgg_tiny"]["fc1"].weight})
    tracker.end_epoch()
    assert np.isnan(tracker.table[[0, 2, 3]]).all() and tracker.table[1].tolist() == [0.0, 0.0]
    with pytest.raises(KeyError, match="no parameter"):
        WeightDistance(model, {"fc1": "net.nope.weight"})


def test_distance_at_is_cumulative_and_must_cover_the_checkpoints():
    row = np.array([0.0, 1.0, 2.0, 3.0])
    assert distance_at(row, [0, 2, 3]).tolist() == [0.0, 3.0, 6.0]
    with pytest.raises(ValueError, match="covers epochs 0..3"):
        distance_at(row, [0, 4])
