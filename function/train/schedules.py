"""Schedules of the training stages: the learning rate per epoch and the epochs saved as checkpoints (docs/method.md §1).

* :func:`lr_schedule` — ``logspace``: the original code's ``np.logspace(log10(lr), log10(lr) − decades, E)``
  (train_net's default), or ``constant`` (distillation phase 1's default, as the original's ``--logspace``
  is off there).
* :func:`paper_schedule` — the checkpoints the sigma stage analyses, ``0 2 5 … 150`` (and ``170 … 400``
  for 400-epoch runs), scaled to shorter runs.
* :func:`parse_epochs` — the one reader of ``--checkpoints`` (``E1 E2 …``, ``paper`` or ``all``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

PAPER_150 = (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 70, 90, 110, 130, 150)
PAPER_400 = PAPER_150 + (170, 190, 240, 280, 320, 360, 400)
LR_SCHEDULES = ("logspace", "constant")


def lr_schedule(kind: str, lr: float, epochs: int, decades: float = 1.0) -> Callable[[int], float]:
    """The learning rate of epoch ``e`` (1-based) of an ``epochs``-epoch run.

    ``logspace``: ``epochs`` values log-spaced from ``lr`` down to ``lr / 10**decades``, computed as the
    original code does (``np.logspace(np.log10(lr), np.log10(lr) - decades, epochs)``); ``constant``: ``lr``.
    """
    if kind == "constant":
        return lambda epoch: float(lr)
    if kind != "logspace":
        raise ValueError(f"unknown learning-rate schedule {kind!r}; choose from {', '.join(LR_SCHEDULES)}")
    table = np.logspace(np.log10(lr), np.log10(lr) - decades, max(epochs, 1))
    if not (np.isfinite(table) & (table > 0)).all():
        raise ValueError(f"--lr-down {decades:g}: the logspace schedule from --lr {lr:g} falls below the smallest "
                         f"positive float (a learning rate of 0) by epoch {int(np.argmin(table > 0)) + 1} of {epochs}")
    return lambda epoch: float(table[epoch - 1])


def paper_list(epochs: int) -> tuple[tuple[int, ...], int]:
    """The paper's checkpoint list for a run of ``epochs`` epochs and the length it was written for: the
    400-epoch list for runs longer than 150 epochs, else the 150-epoch one (the one rule of both)."""
    return (PAPER_400, 400) if epochs > 150 else (PAPER_150, 150)


def paper_schedule(epochs: int) -> list[int]:
    """The paper's epochs (:func:`paper_list`) scaled to ``epochs``."""
    base, length = paper_list(epochs)
    return sorted({round(e * epochs / length) for e in base} | {0, epochs})


def parse_epochs(spec: Sequence[str] | None, epochs: int | None, flag: str = "--checkpoints") -> list[int]:
    """``--checkpoints`` as a sorted list of distinct epochs.

    ``None``/``["paper"]``: :func:`paper_schedule` of ``epochs``; ``["all"]``: every epoch ``0..epochs``;
    otherwise the integers given, each in ``0..epochs`` (any ``≥ 0`` when ``epochs`` is None).  A ValueError
    names the flag.
    """
    words = list(spec or ["paper"])
    if words in (["paper"], ["all"]):
        if epochs is None:
            raise ValueError(f"{flag} {words[0]} needs the run's number of epochs")
        return paper_schedule(epochs) if words == ["paper"] else list(range(epochs + 1))
    try:
        values = [int(x) for x in words]
    except ValueError:
        raise ValueError(f"{flag} takes epochs (integers), 'paper' or 'all', got {' '.join(words)}") from None
    bad = [e for e in values if e < 0 or (epochs is not None and e > epochs)]
    if bad:
        raise ValueError(f"{flag} {bad} outside 0..{epochs if epochs is not None else '∞'}")
    return sorted(set(values))
