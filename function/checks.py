"""The rules an argument must follow, written once for the command line and the Python API.

Each rule takes the argument's name as its caller spells it (``"sigma0"`` for :class:`kdq.SigmaConfig`,
``"--sigma0"`` for a stage's flag) and its value, returns the value, and raises

* :class:`CheckError` (a ``ValueError``) for a bad value, :class:`RangeError` when it is out of its range:
  ``"sigma0 must be in (0, 1], got 5"``;
* ``TypeError`` for a value of the wrong type: ``"grid must be an integer, got 4.5 (float)"``.

The argparse types of :mod:`kdq.function.cli` (``positive_int``, ``in_range`` …) call the same rules through
:func:`kdq.function.cli.within`, so a range such as σ₀'s is written once, here, and ``--help``, the flag's
one-line error and the API's ``ValueError`` all follow it.  Nothing here imports torch.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


class CheckError(ValueError):
    """A bad value of a named argument; its message is one line that begins with the argument's name (the stages'
    :func:`kdq.function.cli.run` prints it as their one-line error)."""


class RangeError(CheckError):
    """A value outside its range; ``requirement`` is the rule in words (``"must be in (0, 1]"``), without the
    argument's name or the value, so that argparse can put it after its own ``argument --flag:``."""

    def __init__(self, name: str, requirement: str, value, text: str | None = None):
        self.name, self.requirement, self.value = name, requirement, value
        super().__init__(f"{name} {requirement}, got {shown(value) if text is None else text}".lstrip())


def shown(value) -> str:
    """A value as a message shows it: numbers plainly, anything else by ``repr``."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return str(value)
    return repr(value)


# ---- numbers in intervals -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """The numbers between ``lo`` and ``hi`` (each bound included unless ``*_open``), integers only with
    ``integer``; ``wording`` replaces the bracket notation in messages (``"a positive integer"``)."""
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    wording: str | None = None

    @property
    def requirement(self) -> str:
        """``"must be in (0, 1]"``, or ``"must be <wording>"``."""
        if self.wording is not None:
            return f"must be {self.wording}"
        return f"must be in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"

    def __contains__(self, value) -> bool:
        above = self.lo < value if self.lo_open else self.lo <= value
        below = value < self.hi if self.hi_open else value <= self.hi
        return bool(above and below)


FINITE = Interval(wording="a finite number")
POSITIVE = Interval(0, lo_open=True, wording="positive")
NONNEGATIVE = Interval(0, wording="≥ 0")
POSITIVE_INT = Interval(1, integer=True, wording="a positive integer")
NONNEGATIVE_INT = Interval(0, integer=True, wording="an integer ≥ 0")
SEED = Interval(0, 2 ** 64, hi_open=True, integer=True, wording="an integer in 0..2**64-1")  # torch, numpy, random
LEVEL = Interval(0, 1, lo_open=True, hi_open=True)  # a bootstrap interval's level
MAX_BOOTSTRAP = 100_000  # the resamples' statistics are kept in memory
BOOTSTRAP_COUNT = Interval(1, MAX_BOOTSTRAP, integer=True,
                           wording=f"an integer in 1..{MAX_BOOTSTRAP} (the resamples are kept in memory)")
SIGMA0 = Interval(0, 1, lo_open=True)  # σ₀: the first σ and the noise scale of σ_f² (σ is clamped to ≤ 1)


def check_integer(name: str, value) -> int:
    """``value`` if it is an integer (Python's or NumPy's; not a bool), else a TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {shown(value)} ({type(value).__name__})")
    return value


def check_number(name: str, value) -> float:
    """``value`` if it is a finite real number (not a bool): a TypeError for a non-number, a RangeError for NaN
    or ±inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {shown(value)} ({type(value).__name__})")
    if not math.isfinite(value):
        raise RangeError(name, FINITE.requirement, value)
    return value


def check_in(name: str, value, interval: Interval):
    """``value`` if it is a number (an integer when ``interval.integer``) inside ``interval``."""
    if interval.integer:
        check_integer(name, value)
    else:
        check_number(name, value)
    if value not in interval:
        raise RangeError(name, interval.requirement, value)
    return value


def check_optional(name: str, value, interval: Interval):
    """``value`` if it is None or inside ``interval`` (:func:`check_in`)."""
    return value if value is None else check_in(name, value, interval)


def check_below(name: str, value, limit: int, limit_name: str) -> int:
    """An integer in ``0 .. limit − 1`` (``limit`` is the value of the argument ``limit_name``)."""
    check_integer(name, value)
    if not 0 <= value < limit:
        raise RangeError(name, f"must be in 0..{limit - 1} (below {limit_name})", value)
    return value


def check_ordered(lo_name: str, lo, hi_name: str, hi) -> None:
    """``lo ≤ hi`` for two arguments already checked to be numbers."""
    if not lo <= hi:
        raise RangeError(lo_name, f"must be ≤ {hi_name} ({shown(hi)})", lo)


def check_grid(name: str, grid: int, size: int, of: str = "") -> int:
    """A σ grid no finer than the input it covers: every cell holds at least one pixel (``of``: whose input,
    e.g. ``"vgg_tiny"``)."""
    if grid > size:
        owner = f" of {of}" if of else ""
        raise CheckError(f"{name} {grid} is larger than the input size {size}{owner}")
    return grid


# ---- other kinds of value -----------------------------------------------------------------------------
def check_bool(name: str, value) -> bool:
    """``value`` if it is a bool (Python's or NumPy's)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {shown(value)} ({type(value).__name__})")
    return value


def check_choice(name: str, value, choices: Sequence):
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise RangeError(name, f"must be one of {', '.join(map(shown, choices))}", value)
    return value


def check_epochs(name: str, epochs: Iterable) -> list[int]:
    """Checkpoint epochs: distinct integers ≥ 0 in increasing order (oldest first)."""
    epochs = list(epochs)
    for e in epochs:
        check_integer(name, e)
    if any(e < 0 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise RangeError(name, "must be distinct epochs ≥ 0 in increasing order", epochs, " ".join(map(str, epochs)))
    return [int(e) for e in epochs]


def check_finite_array(name: str, values, where: str = "") -> np.ndarray:
    """``values`` as an array of real numbers, none NaN or infinite (``where``: which part was checked, as
    ``" in the analysed layer's row"``)."""
    array = np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) \
            or np.iscomplexobj(array):
        raise TypeError(f"{name} must hold real numbers, got {array.dtype}")
    if not np.isfinite(array).all():
        raise CheckError(f"{name} holds NaN/inf{where}")
    return array


def check_weight_distances(name: str, values, where: str = "") -> np.ndarray:
    """Weight distances (docs/method.md §1: sums of norms): finite and ≥ 0."""
    array = check_finite_array(name, values, where)
    if (array < 0).any():
        raise CheckError(f"{name} holds negative weight distances{where} (a distance is a norm)")
    return array
