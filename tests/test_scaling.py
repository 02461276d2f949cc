"""bench/scaling.py: the thread plan of the scaling benches and the ratios they print."""
from __future__ import annotations

import pytest

from kdq.function.cli import UserError
from bench.scaling import Launch, measure, plan_launches, scaling_lines


def test_every_world_size_uses_the_same_cores_beside_one_rank_of_its_share():
    assert plan_launches([2, 1], None) == [Launch(1, 2), Launch(1, 1), Launch(2, 1)]
    assert plan_launches([1, 2, 4], 8) == [Launch(1, 8), Launch(1, 4), Launch(2, 4), Launch(1, 2), Launch(4, 2)]
    with pytest.raises(UserError, match="not divisible"):
        plan_launches([1, 2], 3)


def test_runs_are_alternated_in_rotated_order_and_the_median_is_compared():
    launches = plan_launches([1, 2], 2)
    base = {Launch(1, 2): 20.0, Launch(1, 1): 10.0, Launch(2, 1): 18.0}
    order = []

    def run_one(launch, repeat):
        order.append(launch)
        return base[launch] + repeat

    rates = measure(launches, 3, run_one, show=lambda line: None)
    assert order[:3] == launches and order[3:6] == launches[1:] + launches[:1]
    assert rates[Launch(2, 1)] == [18.0, 19.0, 20.0]
    lines = scaling_lines(rates, "samples/s")
    assert len(lines) == 4 and "2 ranks x 1 thread:" in lines[2] and "19.00 samples/s" in lines[2]
    # medians: 2x1 19, 1x1 11, 1x2 21
    assert "speed-up 1.73x over 1 rank x 1 thread (parallel efficiency 0.86)" in lines[3]
    assert "0.90x over 1 rank x 2 threads (the same 2 cores)" in lines[3]
