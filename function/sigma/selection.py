"""Which images a sigma run fits, and in which order: the seeded draw, the rounds of batches handed to the
ranks, and the name lists (docs/method.md §4) that a run's results are a prefix of.

Each image of the draw is ``PENDING`` until fitted, then ``EFFECTIVE`` or ``NON_EFFECTIVE``.
"""
from __future__ import annotations

import random
from typing import Sequence

PENDING, EFFECTIVE, NON_EFFECTIVE = 0, 1, 2


def draw_order(num_images: int, pic_num: int, pic_seed: int) -> list[int]:
    """The candidate images (dataset indices, the split listed class by class) in draw order, as the original
    code draws them: ``random.seed(pic_seed); random.sample(range(N), pic_num)`` (all N when pic_num ≥ N, where
    the original would stop).  It depends only on (pic_seed, N, pic_num): the same for any world size, batch
    size or resumption."""
    return random.Random(pic_seed).sample(range(num_images), min(pic_num, num_images))


def name_lists(status: Sequence[int], effect_num: int) -> tuple[list[int], list[int], bool]:
    """Positions (in draw order) of the effective and non-effective images, and whether the run is done.

    Walks the draw in order and stops at the first image not yet processed, or once ``effect_num``
    effective images are listed: the lists are a prefix of the draw, the same whatever the batch
    size, world size or interruptions.  Images processed beyond that point (at most one batch per
    rank) keep their folders but are not listed.  Done = ``effect_num`` reached or draw used up.
    """
    effect, non_effect = [], []
    for pos, st in enumerate(status):
        if len(effect) >= effect_num:
            return effect, non_effect, True
        if st == PENDING:
            return effect, non_effect, False
        (effect if st == EFFECTIVE else non_effect).append(pos)
    return effect, non_effect, True


def next_round(status: Sequence[int], batch_images: int, world_size: int) -> list[list[int]]:
    """The pending positions each rank fits next: batches are fixed chunks of the draw order
    (``[j·B, (j+1)·B)``), and a round hands the first ``world_size`` batches that still hold a pending
    image to ranks 0, 1, ...  With fixed chunks a batch holds the same images whatever the world size.
    """
    rounds: list[list[int]] = []
    for start in range(0, len(status), batch_images):
        todo = [p for p in range(start, min(start + batch_images, len(status))) if status[p] == PENDING]
        if todo:
            rounds.append(todo)
            if len(rounds) == world_size:
                break
    return rounds + [[] for _ in range(world_size - len(rounds))]
