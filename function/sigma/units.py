"""The input units of the σ fit (docs/method.md §2 and "Units beyond images"): what one σ value perturbs.

The fit of :mod:`kdq.function.sigma.fit` keeps one σ per *unit* of an input and perturbs the input with
``x + spread(σ) ⊙ ε``; everything else — σ_f², the loss, λ and its escalation, the stopping rule, the choice of σ* —
is the same formula over units.  Three kinds of unit:

- :class:`Cells` — images: σ is a ``g×g`` grid over the ``(3, S, S)`` image, one cell's σ shared by its pixels and
  the three channels (the paper's, bit for bit what kdq did before units existed).
- :class:`Tokens` — token sequences: σ is one value per token, shared by the dimensions of the token's embedding
  vector, the noise added to the output of a named module (the embedding layer: token ids cannot take noise).
  Padding is never a unit: it gets no noise and no entropy.
- :class:`Points` — point clouds: σ is one value per point, shared by its three coordinates.

Scale.  A normalised image has unit variance per channel over the dataset, which is what the method's σ₀, the clamp
``[σ_min, σ_max]`` and the target entropy H* are written for.  Embeddings and coordinates have no such
normalisation (an embedding's scale also changes from one checkpoint to the next), so for tokens and points σ is
*relative*: the noise of a unit is ``σ · s · ε`` with ``s`` the input's own scale, :func:`unit_scale` (the standard
deviation of the clean input over its units and dimensions, per input, at the checkpoint fitted).  σ = 1 is then
noise as large as the signal, as for a normalised image, and the defaults carry over unchanged; the entropy
``log σ + ½ log 2πe`` of a unit is that of the relative σ.  ``Tokens(scale=1.0)`` / ``Points(scale=1.0)`` give
absolute noise instead (any fixed positive number: ``s``).

A unit space is *bound* to one batch (:meth:`UnitSpace.bind`) before a fit: the per-input scale, padding mask and
model inputs (token ids) are then read by input index.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from kdq.function.sigma.entropy import HALF_LOG_2PIE, mean_entropy
from kdq.function.sigma.grid import upsample
from kdq.models.taps import Truncated

UNIT_KINDS = ("cells", "tokens", "points")
ZERO_SCALE = 1e-6  # an input's scale at or below this share of its largest |value| is 0: it takes no noise


def unit_scale(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``s``: the standard deviation of one input ``x`` ``(U, D)`` over its valid units and dimensions, each
    dimension centred on its mean over the valid units — ``sqrt(mean_{u valid, d} (x[u, d] − mean_u x[·, d])²)``.
    ``valid`` ``(U,)`` bool (None: every unit); 0 when there is no valid unit or every valid unit is the same."""
    x = x.float()
    if valid is not None:
        x = x[valid]
    if x.shape[0] == 0:
        return torch.zeros((), device=x.device)
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.square().mean().sqrt()


def masked_mean_entropy(sigma: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """H̄ of one sequence's σ ``(U,)``: the mean of ``log σ + ½ log 2πe`` over its valid units (all units when
    ``valid`` is None)."""
    entropy = torch.log(sigma) + HALF_LOG_2PIE
    if valid is None:
        return entropy.mean()
    return (entropy * valid).sum() / valid.sum()


class UnitSpace:
    """What the fit needs of a kind of unit; :meth:`bind` ties it to one batch of inputs."""

    kind = ""

    def bind(self, x: torch.Tensor) -> "UnitSpace":
        return self

    def sigma_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    def perturb(self, i: int, x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Input ``i``'s block of noisy copies ``x + spread(σ) ⊙ ε`` (``eps``: ``(m, *x.shape)``)."""
        raise NotImplementedError

    def perturb0(self, i: int, x: torch.Tensor, sigma0: float, eps: torch.Tensor) -> torch.Tensor:
        """The noisy copies of σ_f²: every unit at σ₀."""
        raise NotImplementedError

    def mean_entropy(self, i: int, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def context(self, i: int, copies: int) -> tuple:
        """The further model inputs of input ``i``'s block of ``copies`` noisy copies (token ids); none here."""
        return ()

    def valid(self, i: int) -> torch.Tensor | None:
        """Input ``i``'s units that are units (bool ``sigma_shape``), or None when all are."""
        return None

    def noiseless(self) -> torch.Tensor | None:
        """Bool ``(B,)`` of a bound space: the inputs that take no noise at all (their σ_f² is 0 by definition), or
        None (none)."""
        return None


@dataclass(frozen=True)
class Cells(UnitSpace):
    """Images ``(3, S, S)``: σ on ``grid × grid`` cells (``grid`` None: the fit config's ``g``)."""

    grid: int | None = None
    kind = "cells"

    def sigma_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (self.grid, self.grid)

    def perturb(self, i, x, sigma, eps):
        # the 3 channels share a cell's σ; each image's noisy block is built on its own
        return torch.addcmul(x, upsample(sigma, x.shape[-1]), eps)

    def perturb0(self, i, x, sigma0, eps):
        return torch.add(x, eps, alpha=sigma0)

    def mean_entropy(self, i, sigma):
        return mean_entropy(sigma)


@dataclass(frozen=True)
class Rows(UnitSpace):
    """Inputs ``(U, D)`` whose units are the rows (tokens: embedding vectors; points: coordinates): σ ``(U,)``.

    ``mask`` ``(B, U)`` (1/True: a unit) or None (every row is a unit); ``scale`` None: :func:`unit_scale` per input
    (relative σ), a positive number: that fixed scale (absolute σ)."""

    mask: Any = None
    scale: float | None = None
    _valid: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _scale: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _noiseless: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.scale is not None:
            from kdq.function.checks import CheckError

            if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or \
                    not math.isfinite(self.scale) or self.scale <= 0:
                raise CheckError(f"units.scale must be a positive number (None: each input's own scale), got "
                                 f"{self.scale!r}")

    def bind(self, x: torch.Tensor) -> "Rows":
        if x.dim() != 3:
            raise ValueError(f"{self.kind} inputs must be (B, U, D), got {tuple(x.shape)}")
        valid = None if self.mask is None else torch.as_tensor(self.mask, device=x.device).bool()
        if valid is not None and valid.shape != x.shape[:2]:
            raise ValueError(f"the {self.kind} mask must be (B, U) = {tuple(x.shape[:2])}, got {tuple(valid.shape)}")
        if self.scale is not None:
            scale = torch.full((x.shape[0],), float(self.scale), device=x.device)
            return replace(self, _valid=valid, _scale=scale)
        rows = [x[i] if valid is None else x[i][valid[i]] for i in range(x.shape[0])]
        scale = torch.stack([unit_scale(r) for r in rows])
        largest = torch.stack([r.abs().amax() if r.numel() else r.new_zeros(()) for r in rows])
        # an input of zero scale (one unit, identical units, coincident points): no noise reaches it, so σ_f² is 0
        # and the fit fails, as for an image the layer ignores (rounding of identical rows leaves s ≈ 1e-8·|x|)
        return replace(self, _valid=valid, _scale=scale, _noiseless=scale <= ZERO_SCALE * largest)

    def sigma_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (x.shape[1],)

    def _spread(self, i: int, sigma: torch.Tensor) -> torch.Tensor:
        """``σ · s`` per unit, 0 on non-units, as a ``(U, 1)`` column shared by the unit's dimensions."""
        spread = sigma * self._scale[i]
        if self._valid is not None:
            spread = spread * self._valid[i]
        return spread[:, None]

    def perturb(self, i, x, sigma, eps):
        return torch.addcmul(x, self._spread(i, sigma), eps)

    def perturb0(self, i, x, sigma0, eps):
        return torch.addcmul(x, self._spread(i, torch.full(x.shape[:1], sigma0, device=x.device)), eps)

    def mean_entropy(self, i, sigma):
        return masked_mean_entropy(sigma, self.valid(i))

    def valid(self, i: int) -> torch.Tensor | None:
        return None if self._valid is None else self._valid[i]

    def noiseless(self) -> torch.Tensor | None:
        """The inputs whose own scale is 0 (``scale`` given: none)."""
        return self._noiseless


@dataclass(frozen=True)
class Points(Rows):
    """Point clouds ``(P, 3)``: one σ per point, shared by its coordinates (``mask``: which rows are points, for
    clouds padded to one P)."""

    kind = "points"


@dataclass(frozen=True)
class Tokens(Rows):
    """Token sequences: noise on the output of the module ``embedding`` (its name in the model), one σ per token.

    The fit's inputs are that module's clean output ``(B, L, D)``; ``ids`` ``(B, L)`` are the model's inputs,
    passed along with each block of noisy copies; ``mask`` ``(B, L)`` marks real tokens (padding is never a unit);
    ``call(model, ids)`` runs the model (default ``model(ids)``).  :func:`kdq.fit_sigma` fills in ``ids`` and
    ``mask`` (from ``pad_id`` when no mask is given)."""

    embedding: str = "embed"
    pad_id: int | None = 0  # with ``mask`` None: the tokens whose id is ``pad_id`` are padding (None: none is)
    call: Callable[[torch.nn.Module, torch.Tensor], Any] | None = field(default=None, repr=False)
    ids: Any = field(default=None, repr=False)
    kind = "tokens"

    def context(self, i: int, copies: int) -> tuple:
        row = self.ids[i]
        return (row.expand(copies, *row.shape),)


def unit_space(units: str | UnitSpace | None, grid: int) -> UnitSpace:
    """The unit space ``units`` names: ``None``/``"cells"`` → :class:`Cells` of the config's grid; a space as given
    (a :class:`Cells` without a grid takes the config's)."""
    if units is None or units == "cells":
        return Cells(grid)
    if isinstance(units, Cells) and units.grid is None:
        return Cells(grid)
    if isinstance(units, UnitSpace):
        return units
    raise ValueError(f"units must be one of {', '.join(UNIT_KINDS)} or a kdq unit space (kdq.Tokens, kdq.Points), "
                     f"got {units!r}")


class Injected(Truncated):
    """``model`` run on token ids with the output of its submodule ``inject`` replaced by given (noisy) values,
    up to the output of the submodule ``tap``: ``forward(values, ids)``.  Nothing after the tap runs (a
    :class:`~kdq.models.taps.Truncated` at ``tap`` with a hook on ``inject``).

    ``call(model, ids)`` runs the model (default ``model(ids)``; e.g. ``lambda m, ids: m(ids, attention_mask=...)``)."""

    def __init__(self, model: torch.nn.Module, inject: str, tap: str,
                 call: Callable[[torch.nn.Module, torch.Tensor], Any] | None = None):
        if inject == tap:
            raise ValueError(f"the tapped layer {tap!r} is the module whose output is perturbed: tap a later one")
        super().__init__(model, tap, call)
        self.inject = inject

    def forward(self, values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        def replace(module, inputs, output):
            if output.shape != values.shape:
                raise ValueError(f"{self.inject!r} gives {tuple(output.shape)}, the noisy values are "
                                 f"{tuple(values.shape)}")
            return values.to(output.dtype)

        handle = self.model.get_submodule(self.inject).register_forward_hook(replace)
        try:
            return super().forward(ids)
        finally:
            handle.remove()


def module_output(model: torch.nn.Module, name: str, ids: torch.Tensor,
                  call: Callable[[torch.nn.Module, torch.Tensor], Any] | None = None) -> torch.Tensor:
    """The output of ``model``'s submodule ``name`` for ``ids`` (the clean values a token fit perturbs), without
    gradient; the forward stops there."""
    with torch.no_grad():
        return Truncated(model, name, call)(ids)
