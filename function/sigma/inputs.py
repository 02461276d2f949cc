"""The checks of a unit fit's inputs (tokens and point clouds; images: :mod:`kdq.function.api`), one line each.

Each check returns the inputs as tensors the fit takes, or raises a :class:`~kdq.function.checks.CheckError`
(a ValueError) or a TypeError naming the argument and, where it is one input that is wrong, its index.
"""
from __future__ import annotations

import numpy as np
import torch

from kdq.function.checks import CheckError
from kdq.function.data.masks import grey_values


def as_tensor(name: str, value) -> torch.Tensor:
    """``value`` (a tensor or a numpy array) as a tensor; a TypeError names ``name`` otherwise."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}")
    return value


def token_ids(ids, mask=None, pad_id: int | None = 0, max_length: int | None = None,
              name: str = "inputs") -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(N, L)`` (integers) and their unit mask ``(N, L)`` bool: ``mask`` (1/True: a real token) when
    given, else the ids that are not ``pad_id`` (None: every position).  Errors: not integers, not 2-D, an empty
    sequence (no real token), a mask of another shape, more tokens than ``max_length`` (the model's)."""
    ids = as_tensor(name, ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got {ids.dtype}")
    if ids.dim() != 2:
        raise CheckError(f"{name} must be (N, L) token ids, got shape {tuple(ids.shape)}")
    if (ids < 0).any():
        raise CheckError(f"{name} holds negative token ids")
    if mask is None:
        valid = torch.ones_like(ids, dtype=torch.bool) if pad_id is None else ids != pad_id
    else:
        valid = as_tensor("mask", mask)
        if valid.shape != ids.shape:
            raise CheckError(f"the token mask must be (N, L) = {tuple(ids.shape)}, got {tuple(valid.shape)}")
        valid = valid != 0
    empty = (~valid.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise CheckError(f"{name}[{empty[0]}] is an empty sequence (no token that is not padding)"
                         + (f"; {len(empty)} are" if len(empty) > 1 else ""))
    if max_length is not None and ids.shape[1] > max_length:
        raise CheckError(f"{name} are {ids.shape[1]} tokens long; the model takes at most {max_length}")
    return ids.long(), valid


def point_clouds(points, name: str = "inputs") -> torch.Tensor:
    """Point clouds ``(N, P, 3)`` of finite floats with P ≥ 1 (NaN or infinite coordinates name the cloud)."""
    points = as_tensor(name, points)
    if not points.is_floating_point():
        raise TypeError(f"{name} must hold float coordinates, got {points.dtype}")
    if points.dim() != 3 or points.shape[-1] != 3:
        raise CheckError(f"{name} must be (N, P, 3) point clouds, got shape {tuple(points.shape)}")
    if points.shape[1] == 0:
        raise CheckError(f"{name} are clouds of zero points")
    bad = (~torch.isfinite(points).all(dim=(1, 2))).nonzero().flatten().tolist()
    if bad:
        raise CheckError(f"{name}[{bad[0]}] holds NaN or infinite coordinates")
    return points.float()


def unit_foreground(foreground, valid: torch.Tensor, name: str = "foreground") -> np.ndarray:
    """One foreground flag per unit ``(N, U)`` as bool (a unit is foreground where its value is > 0, as a mask
    pixel, :func:`~kdq.function.data.masks.grey_values`); padding is never foreground.  Errors: another number of
    inputs or another length than the inputs', a flag on padding."""
    n, units = valid.shape
    array = foreground.detach().cpu().numpy() if isinstance(foreground, torch.Tensor) else np.asarray(foreground)
    if array.ndim != 2 or array.shape[0] != n:
        raise CheckError(f"{name} must be (N, U) = ({n}, {units}), one flag per unit of each input, got shape "
                         f"{array.shape}")
    if array.shape[1] != units:
        raise CheckError(f"{name} has {array.shape[1]} flags per input but the inputs have {units} units")
    flags = np.stack([grey_values(array[i][None], f"{name}[{i}]")[0] > 0 for i in range(n)])
    on_padding = (flags & ~valid.cpu().numpy()).any(axis=1).nonzero()[0]
    if on_padding.size:
        raise CheckError(f"{name}[{on_padding[0]}] marks padding as foreground")
    return flags
