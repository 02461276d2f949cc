"""Weight distance of SPEC §1.

For each layer's analysed weight ``w`` and epoch ``t ≥ 1``::

    weight_diff[l, t] = Σ_iterations ‖w_after_step − w_before_step‖₂ / ‖w_init‖₂,   weight_diff[:, 0] = 0

The per-step norms are accumulated on the weights' device (no host sync per step); one copy of each
analysed weight is kept as "before".
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models import LAYERS, TAPS, analysed_weight


class WeightDistance:
    def __init__(self, model: nn.Module, arch: str, epochs: int, layers: tuple[str, ...] = LAYERS):
        self.weights = [analysed_weight(model, TAPS[arch][layer]) for layer in layers]
        self.table = np.zeros((len(layers), epochs + 1), dtype=np.float64)
        self.init_norm = torch.stack([w.detach().float().norm() for w in self.weights]).cpu()
        self._prev = [w.detach().clone() for w in self.weights]
        self._acc = torch.zeros(len(self.weights), dtype=torch.float64, device=self.weights[0].device)

    @torch.no_grad()
    def step(self) -> None:
        """Call right after ``optimizer.step()``: add ‖w − w_prev‖ of every analysed weight."""
        for i, (w, prev) in enumerate(zip(self.weights, self._prev)):
            self._acc[i] += torch.linalg.vector_norm((w - prev).float()).double()
            prev.copy_(w)

    def end_epoch(self, epoch: int) -> None:
        self.table[:, epoch] = (self._acc.cpu() / self.init_norm.double()).numpy()
        self._acc.zero_()

    def resync(self) -> None:
        """Take the current weights as "before" (after loading a resume state)."""
        for w, prev in zip(self.weights, self._prev):
            prev.copy_(w.detach())

    def state_dict(self) -> dict:
        return {"table": torch.from_numpy(self.table.copy()), "init_norm": self.init_norm.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.table = state["table"].numpy().astype(np.float64)
        self.init_norm = state["init_norm"].clone()
        self.resync()


def cumulative(weight_diff: np.ndarray) -> np.ndarray:
    """D(e) = Σ_{t ≤ e} weight_diff[:, t] (same shape)."""
    return np.cumsum(weight_diff, axis=-1)
