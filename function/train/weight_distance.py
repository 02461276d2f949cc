"""The weight distance of docs/method.md §1 and the cumulative distance D the metrics stage reads.

For each layer's analysed weight ``w`` and epoch ``t ≥ 1``::

    weight_diff[l, t] = Σ_iterations ‖w_after_step − w_before_step‖₂ / ‖w_init‖₂,   weight_diff[:, 0] = 0
    D(e) = Σ_{t ≤ e} weight_diff[l, t]

:class:`WeightDistance` is the callback a training loop calls after every ``optimizer.step()``; it works
for any model, given the names of the weights to track::

    tracker = WeightDistance(model, {"conv": "layer4.1.conv2.weight", "fc3": "fc.weight"})
    for epoch in range(1, epochs + 1):
        for x, y in loader:
            ...; optimizer.step(); tracker.step()
        tracker.end_epoch()
    np.save("weight_diff.npy", tracker.table)   # (4, epochs+1), rows conv fc1 fc2 fc3; NaN for untracked

The per-step norms are accumulated on the weights' device (no host sync per step); one copy of each
tracked weight is kept as "before".  A weight whose initial norm is 0 (or not finite) has no distance: the
tracker refuses it (:func:`check_initial_norms`), in the API and in the training stages alike.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from kdq.function.checks import CheckError
from kdq.models import LAYERS


class WeightDistance:
    """Per-epoch weight distance of the weights named in ``weights`` (``{layer: parameter name}``).

    ``table`` is ``(len(layers), epochs_done + 1)``: column 0 is 0, row ``l`` holds layer ``layers[l]``'s
    distances and is NaN when ``weights`` does not name that layer.
    """

    def __init__(self, model: nn.Module, weights: Mapping[str, str], layers: Sequence[str] = LAYERS):
        unknown = [layer for layer in weights if layer not in layers]
        if unknown:
            raise KeyError(f"unknown layer(s) {', '.join(unknown)}; choose from {', '.join(layers)}")
        params = dict(model.named_parameters())
        missing = [name for name in weights.values() if name not in params]
        if missing:
            raise KeyError(f"model has no parameter {missing[0]!r}")
        if not weights:
            raise ValueError("WeightDistance needs at least one weight to track")
        self.layers = tuple(layers)
        self.rows = [self.layers.index(layer) for layer in weights]
        self.weights = [params[name] for name in weights.values()]
        self.init_norm = torch.stack([w.detach().float().norm() for w in self.weights]).cpu()
        check_initial_norms(list(weights.values()), self.init_norm.tolist())
        self._columns = [self._blank(0.0)]
        self._prev = [w.detach().clone() for w in self.weights]
        self._acc = torch.zeros(len(self.weights), dtype=torch.float64, device=self.weights[0].device)

    def _blank(self, value: float) -> np.ndarray:
        column = np.full(len(self.layers), np.nan)
        column[self.rows] = value
        return column

    @property
    def table(self) -> np.ndarray:
        return np.stack(self._columns, axis=1)

    @property
    def epochs_done(self) -> int:
        return len(self._columns) - 1

    @torch.no_grad()
    def step(self) -> None:
        """Call right after ``optimizer.step()``: add ‖w − w_prev‖ of every tracked weight."""
        for i, (w, prev) in enumerate(zip(self.weights, self._prev)):
            self._acc[i] += torch.linalg.vector_norm((w - prev).float()).double()
            prev.copy_(w)

    def end_epoch(self) -> np.ndarray:
        """Close the epoch: append its column (the accumulated distances over ``‖w_init‖``) and return it."""
        column = self._blank(np.nan)
        column[self.rows] = (self._acc.cpu() / self.init_norm.double()).numpy()
        self._columns.append(column)
        self._acc.zero_()
        return column

    def resync(self) -> None:
        """Take the current weights as "before" (after loading a resume state)."""
        for w, prev in zip(self.weights, self._prev):
            prev.copy_(w.detach())

    def state_dict(self) -> dict:
        return {"table": torch.from_numpy(self.table.copy()), "init_norm": self.init_norm.clone()}

    def load_state_dict(self, state: dict) -> None:
        table = state["table"].numpy().astype(np.float64)
        self._columns = [table[:, t].copy() for t in range(table.shape[1])]
        self.init_norm = state["init_norm"].clone()
        self.resync()


def check_initial_norms(names: Sequence[str], norms: Sequence[float]) -> None:
    """The distance is relative to ‖w_init‖₂: a weight whose initial norm is 0 (all zeros) or not finite has no
    weight distance; a CheckError names it (the API's ``weights`` argument; the training stages' one-line error)."""
    for name, norm in zip(names, norms):
        if not (math.isfinite(norm) and norm > 0):
            raise CheckError(f"weights: parameter {name!r} has norm {norm} at the start, so its weight "
                             "distance ‖Δw‖ / ‖w_init‖ (docs/method.md §1) is undefined; initialise it to non-zero "
                             "values or track another weight")


def snapshot_table(states: dict[int, dict], weights: Mapping[str, str]) -> np.ndarray:
    """The approximation of :class:`WeightDistance`'s table for checkpoints saved by another trainer (docs/method.md
    §1): ``weight_diff`` (4, E+1) from snapshots (``{epoch: state dict}``, oldest first): for each layer of ``weights``
    (layer → parameter name), ``‖w(e_k) − w(e_{k−1})‖ / ‖w(e_0)‖`` at each saved epoch ``e_k`` after the first, 0
    elsewhere; NaN rows for the layers not named.  A weight that is 0 at ``e_0`` is a CheckError."""
    epochs = list(states)
    table = np.full((len(LAYERS), epochs[-1] + 1), np.nan)
    first = states[epochs[0]]
    norms = [float(torch.linalg.vector_norm(first[name].double())) for name in weights.values()]
    check_initial_norms(list(weights.values()), norms)
    for (layer, name), norm in zip(weights.items(), norms):
        row = LAYERS.index(layer)
        table[row] = 0.0
        for before, after in zip(epochs, epochs[1:]):
            step = torch.linalg.vector_norm(states[after][name].double() - states[before][name].double())
            table[row, after] = float(step) / norm
    return table


def cumulative_distance(weight_diff: np.ndarray) -> np.ndarray:
    """``D(e) = Σ_{t ≤ e} weight_diff[..., t]`` for every ``e`` (same shape, float64)."""
    return np.cumsum(np.asarray(weight_diff, dtype=np.float64), axis=-1)


def distance_at(weight_diff_row: np.ndarray, epochs: Sequence[int]) -> np.ndarray:
    """``D(e)`` of one layer's row at each of ``epochs``; a ValueError when the row does not reach them."""
    row = np.asarray(weight_diff_row, dtype=np.float64)
    if max(epochs) > row.shape[-1] - 1:
        raise ValueError(f"covers epochs 0..{row.shape[-1] - 1} but the checkpoints reach epoch {max(epochs)}")
    return cumulative_distance(row)[list(epochs)]
