"""Throughput at several world sizes: a stage script launched under torchrun with a fixed number of CPU
threads per rank, and the ratios (used by ``bench/train_scaling.py`` and ``bench/sigma_scaling.py``).

Thread plan, with ``T`` cores in all and world sizes ``W``: every ``w`` in ``W`` runs as ``w`` ranks of
``T/w`` threads (the same ``T`` cores whatever ``w``), and one rank of ``T/w`` threads is run beside it
(one rank's share).  From the measured rates:

* speed-up ``S_w = rate(w ranks × T/w) / rate(1 rank × T/w)`` and parallel efficiency ``S_w / w``: what
  adding ranks buys when each brings its own cores;
* same-cores ratio ``R_w = rate(w ranks × T/w) / rate(1 rank × T)``: whether, on a fixed machine, ranks
  beat intra-op threads.

Launches are run ``repeats`` times in alternated, rotated order, so that machine noise hits each alike;
the figure shown for each is the median of its runs.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from kdq.function.cli import UserError, positive_int

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Launch:
    world_size: int
    threads: int  # per rank

    def __str__(self) -> str:
        return (f"{self.world_size} rank{'s' if self.world_size > 1 else ''} x {self.threads} "
                f"thread{'s' if self.threads > 1 else ''}")

    @property
    def tag(self) -> str:
        return f"w{self.world_size}_t{self.threads}"


def add_scaling_args(parser: argparse.ArgumentParser) -> None:
    """--world-sizes, --threads, --repeats, --device, --out, --timeout: shared by the scaling benches."""
    g = parser.add_argument_group("launches")
    g.add_argument("--world-sizes", type=positive_int, nargs="+", default=[1, 2], metavar="W",
                   help="torchrun --nproc_per_node values to compare")
    g.add_argument("--threads", type=positive_int, default=None, metavar="T",
                   help="CPU cores in all: W ranks get T/W threads each (OMP_NUM_THREADS), and 1 rank with T/W "
                        "threads runs beside each W (default: the largest world size, one thread a rank)")
    g.add_argument("--repeats", type=positive_int, default=3,
                   help="runs of every launch, alternated in rotated order; the median is shown")
    g.add_argument("--device", default="cpu", help="--device of the stage (gloo on the CPU)")
    g.add_argument("--out", type=Path, default=None,
                   help="folder for the data and runs, kept (default: a temporary folder, removed at the end)")
    g.add_argument("--timeout", type=positive_int, default=1800, help="seconds one launch may take")


def plan_launches(world_sizes: list[int], threads: int | None) -> list[Launch]:
    """Every ``w`` as ``w × T/w`` and ``1 × T/w`` (see the module docstring); ``T`` must divide by each ``w``."""
    sizes = sorted(set(world_sizes))
    total = max(sizes) if threads is None else threads
    bad = [w for w in sizes if total % w]
    if bad:
        raise UserError(f"--threads {total} is not divisible by world size(s) {', '.join(map(str, bad))}: "
                        "the launches would not use the same cores")
    launches = []
    for w in sizes:
        for launch in (Launch(1, total // w), Launch(w, total // w)):
            if launch not in launches:
                launches.append(launch)
    return launches


@contextlib.contextmanager
def work_dir(out: Path | None) -> Iterator[Path]:
    """``out`` (created, kept), or a temporary folder removed on exit."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="kdq_scaling_") as tmp:
        yield Path(tmp)


def torchrun(script: str, argv: list, launch: Launch, timeout: int) -> subprocess.CompletedProcess:
    """Run ``script`` (relative to the repository) under torchrun on one node with ``launch``'s ranks and
    threads; a failure is a UserError with the last line the stage wrote to stderr."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={launch.world_size}",
           str(ROOT / script), *map(str, argv)]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(launch.threads),
           "MKL_NUM_THREADS": str(launch.threads)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{script} ({launch}) took more than --timeout {timeout} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()] or proc.stderr.splitlines() or [""]
        raise UserError(f"{script} ({launch}) exited with status {proc.returncode}: {lines[-1].strip()}")
    return proc


def measure(launches: list[Launch], repeats: int, run_one: Callable[[Launch, int], float],
            show: Callable[[str], None] = print) -> dict[Launch, list[float]]:
    """``run_one(launch, repeat)`` → a rate, for every launch ``repeats`` times in rotated order."""
    rates: dict[Launch, list[float]] = {launch: [] for launch in launches}
    for r in range(repeats):
        k = r % len(launches)
        for launch in launches[k:] + launches[:k]:
            rates[launch].append(run_one(launch, r))
            show(f"  run {r + 1}/{repeats}, {launch}: {rates[launch][-1]:.2f}")
    return rates


def scaling_lines(rates: dict[Launch, list[float]], unit: str) -> list[str]:
    """The median rate of every launch, then ``S_w``, ``S_w / w`` and ``R_w`` for every ``w > 1``."""
    med = {launch: statistics.median(values) for launch, values in rates.items()}
    lines = [f"{str(launch) + ':':22s}{value:10.2f} {unit}  (runs: {', '.join(f'{v:.2f}' for v in rates[launch])})"
             for launch, value in med.items()]
    total = max(launch.world_size * launch.threads for launch in med)
    for launch in med:
        w, t = launch.world_size, launch.threads
        if w == 1:
            continue
        speed_up = med[launch] / med[Launch(1, t)]
        line = (f"world size {w}: speed-up {speed_up:.2f}x over {Launch(1, t)} (parallel efficiency "
                f"{speed_up / w:.2f})")
        if Launch(1, total) in med and w * t == total:
            line += f"; {med[launch] / med[Launch(1, total)]:.2f}x over {Launch(1, total)} (the same {total} cores)"
        lines.append(line)
    return lines


def compare_launches(launches: list[Launch], repeats: int, run_one: Callable[[Launch, int], float], unit: str,
            header: str) -> dict[Launch, list[float]]:
    """Print ``header``, :func:`measure` (a line a run) and print :func:`scaling_lines`."""
    print(f"{header}; {len(launches)} launches x {repeats} runs", flush=True)
    rates = measure(launches, repeats, run_one, show=lambda line: print(line, flush=True))
    for line in scaling_lines(rates, unit):
        print(line)
    return rates
