"""The checkpoint schedule of SPEC §1, scaled to the run's length."""
from __future__ import annotations

PAPER_150 = (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 70, 90, 110, 130, 150)
PAPER_400 = PAPER_150 + (170, 190, 240, 280, 320, 360, 400)


def paper_schedule(epochs: int) -> list[int]:
    """The paper's epochs scaled to ``epochs`` (the 400-epoch list for runs longer than 150 epochs)."""
    base, length = (PAPER_400, 400) if epochs > 150 else (PAPER_150, 150)
    return sorted({round(e * epochs / length) for e in base} | {0, epochs})


def resolve_checkpoints(spec: list[str] | None, epochs: int) -> list[int]:
    """``None`` or ``["paper"]`` → the scaled paper schedule; else the given epochs (validated)."""
    if not spec or spec == ["paper"]:
        return paper_schedule(epochs)
    try:
        values = sorted({int(x) for x in spec})
    except ValueError:
        raise ValueError(f"--checkpoints takes epochs (integers) or 'paper', got {' '.join(spec)}") from None
    bad = [e for e in values if not 0 <= e <= epochs]
    if bad:
        raise ValueError(f"--checkpoints {bad} outside 0..{epochs}")
    return values


def effective_rule_start(epochs: int) -> int:
    """First epoch at which the effective-sample rule applies: epoch 40 of 150, scaled (SPEC §2.5)."""
    return round(40 * epochs / 150)
