"""The sigma stage on token sequences and point clouds: the data side and the fit's inputs of a unit run.

A unit run writes the layout of docs/method.md §4 with one difference: an input's ``best_sigma_entropy.npy`` is
``(K, 1, 1, U)`` — its U real units (tokens without the padding, points) as a 1×U grid — so the metrics stage reads
it as it reads image maps.  :class:`UnitSource` gives the inputs and their foreground flags, :func:`unit_feature`
the forward the fit perturbs (for tokens: the embedding output replaced by its noisy copy), :func:`unit_batch` the
fit's inputs at the checkpoint loaded (a token's clean embedding changes with the checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdq.function.data.modality import MODALITIES
from kdq.function.sigma.units import Injected, Points, Tokens, UnitSpace, module_output


class UnitSource:
    """A text or point split for a sigma run: ``names`` (the name lists' entries), ``len``, per input its model
    input (token ids padded to one length, or points), which positions are units, and its foreground flags."""

    def __init__(self, modality: str, root: Path, split: str):
        self.modality, self.root, self.split = modality, Path(root), split
        self.dataset = MODALITIES[modality].read(root, split)
        self.names = list(self.dataset.names)
        self.classes = self.dataset.classes
        self._index = {name: i for i, name in enumerate(self.names)}

    def index_of(self, name: str) -> int:
        """The position of the input ``name`` (a UserError naming it when the split has none)."""
        if name not in self._index:
            from kdq.function.cli import UserError

            raise UserError(f"--data: split {self.split!r} of {self.root} has no input {name!r} (a sigma run of "
                            "another dataset?)")
        return self._index[name]

    def __len__(self) -> int:
        return len(self.names)

    def inputs(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model inputs of ``indices`` ``(B, U…)`` and their unit masks ``(B, U)``."""
        items = [self.dataset[i] for i in indices]
        x = torch.stack([item[0] for item in items])
        if self.modality == "text":
            valid = torch.stack([item[3] for item in items])
        else:
            valid = torch.ones(x.shape[:2], dtype=torch.bool)
        return x, valid

    def foreground(self, index: int) -> np.ndarray:
        """Input ``index``'s foreground flags over its real units, ``(U_i,)`` bool."""
        item = self.dataset[index]
        fg = item[2].numpy().astype(bool)
        return fg[item[3].numpy()] if self.modality == "text" else fg

    def tokens(self, index: int) -> list[str]:
        """Input ``index``'s tokens (text), for the figures."""
        return list(self.dataset.records[index].tokens)

    def points(self, index: int) -> np.ndarray:
        """Input ``index``'s coordinates ``(P, 3)`` (points), for the figures."""
        return self.dataset.points[index]


@dataclass(frozen=True)
class FlagForeground:
    """The foreground of tokens and points: the dataset's flags, one per unit (the metrics' record of the rule)."""

    source: str = "flags"

    def describe(self) -> dict[str, str]:
        return {"foreground": "flags"}


def padded_units(maps: list[np.ndarray], flags: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs of different numbers of units side by side: σ* ``(K, 1, U_i)`` each → ``(N, K, 1, U)`` NaN-padded,
    their flags → ``(N, 1, U)`` (False on padding) and which are units ``(N, 1, U)``."""
    width = max(m.shape[-1] for m in maps)
    out = np.full((len(maps), maps[0].shape[0], 1, width), np.nan)
    fg = np.zeros((len(maps), 1, width), dtype=bool)
    valid = np.zeros_like(fg)
    for i, (m, f) in enumerate(zip(maps, flags)):
        out[i, ..., : m.shape[-1]] = m
        fg[i, 0, : f.shape[0]] = f
        valid[i, 0, : m.shape[-1]] = True
    return out, fg, valid


def unit_feature(model: nn.Module, info, layer: str) -> nn.Module:
    """The forward the fit perturbs: for tokens the model with ``info.inject``'s output replaced, up to the tap;
    for points the model up to the tap."""
    from kdq.models import truncated

    tap = info.taps[layer]
    if info.modality == "text":
        return Injected(model, info.inject, tap.node)
    return truncated(model, tap)


def unit_batch(model: nn.Module, info, inputs: torch.Tensor, valid: torch.Tensor,
               device: torch.device) -> tuple[torch.Tensor, UnitSpace]:
    """The fit's inputs and unit space for a batch at the checkpoint ``model`` holds now: token ids → their clean
    embeddings (``info.inject``'s output) with the ids and the padding mask; points as they are."""
    inputs, valid = inputs.to(device), valid.to(device)
    if info.modality == "text":
        values = module_output(model, info.inject, inputs)
        return values.float(), Tokens(embedding=info.inject, mask=valid, ids=inputs)
    return inputs.float(), Points(mask=valid)
