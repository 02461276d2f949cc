"""Devices, seeds and torch.distributed (torchrun) set-up.

Distributed runs are launched with ``torchrun``; :func:`init_distributed` reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment, so the scripts need no flag for it.
Backend: NCCL on CUDA, gloo on CPU.  Rank 0 is the only writer (:attr:`Dist.is_main`).
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from kdq.function.checks import CheckError
from kdq.function.cli import UserError



@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``--device``: ``auto`` → CUDA when available, else Apple's MPS, else the CPU; ``cuda`` → this rank's local
    GPU.  A device this machine does not have, or one that cannot run a stage (``meta``), is a UserError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    kind = name.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    elif kind == "mps":
        if not mps_available():
            raise UserError(f"--device {name}: Apple's MPS is not available on this machine (use --device cpu)")
    elif kind != "cpu":
        raise UserError(f"--device {name}: choose auto, cpu, cuda, cuda:N or mps")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")  # what torchrun sets for env:// besides the ranks


def dist_from_env(env=None) -> Dist:
    """The rank, world size and local rank torchrun put in the environment (``Dist()`` outside torchrun), checked:
    integers with ``0 ≤ RANK < WORLD_SIZE`` and ``LOCAL_RANK ≥ 0``, and, for a world of more than one process,
    every variable torchrun sets; anything else is one UserError naming the variable."""
    env = os.environ if env is None else env
    values = {}
    for name, default in zip(TORCHRUN_VARIABLES, ("0", "1", "0")):
        text = env.get(name, default)
        try:
            values[name] = int(text)
        except ValueError:
            raise UserError(f"environment variable {name}={text!r} is not an integer (it is set by torchrun; "
                            f"unset it to run a single process)") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1:
        raise UserError(f"environment variable WORLD_SIZE={world} must be ≥ 1 (unset it to run a single process)")
    if not 0 <= rank < world:
        raise UserError(f"environment variable RANK={rank} must be in 0..{world - 1} (WORLD_SIZE={world})")
    if local < 0:
        raise UserError(f"environment variable LOCAL_RANK={local} must be ≥ 0")
    if world > 1:
        missing = [name for name in (*TORCHRUN_VARIABLES, *RENDEZVOUS_VARIABLES) if not env.get(name)]
        if missing:
            raise UserError(f"environment variable WORLD_SIZE={world} asks for a distributed run but "
                            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: launch it with "
                            f"torchrun, or unset WORLD_SIZE to run a single process")
    return Dist(rank, world, local)


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Initialise the process group when launched by torchrun; return the rank info and the device."""
    ctx = dist_from_env()
    world, rank, local = ctx.world_size, ctx.rank, ctx.local_rank
    device = resolve_device(device_name, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local), device


# what torch and numpy raise for a start-up step that cannot be done (an allocation that fails, a shape that does
# not work out, an op the device lacks); OSError is left to kdq.function.cli.run, which knows the user's errnos
STEP_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError,
               NotImplementedError, AssertionError)


@contextmanager
def startup_step(what: str):
    """A step of a stage's start-up (``"building the model"``, ``"building the data loaders"``): an error torch or
    numpy raises inside it is one UserError naming the step — never a traceback (``--debug`` shows it, chained)."""
    try:
        yield
    except (UserError, CheckError):
        raise
    except STEP_ERRORS as exc:
        from kdq.function.io.checkpoint import first_line

        raise UserError(f"{what}: {first_line(exc)}") from exc


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_ok(ok: bool, device: torch.device) -> bool:
    """True on every rank when ``ok`` is true on every rank (a barrier; no-op without torch.distributed):
    lets every rank stop with rank 0 when rank 0 refuses its input."""
    if not dist.is_initialized():
        return ok
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over the ranks (float64; the values themselves without torch.distributed)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def torch_seed(seed: int) -> int:
    """``seed`` (0..2**64-1, what ``--seed`` accepts) as the signed 64-bit integer that seeds a torch generator
    exactly as ``seed`` does (torch reads both as the same 64 bits), so that code adding to it (the
    ``DistributedSampler`` seeds epoch ``e`` with ``seed + e``) wraps around modulo 2**64 instead of overflowing;
    seeds below 2**63 are returned unchanged."""
    return seed - 2 ** 64 if seed >= 2 ** 63 else seed


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on ``parts`` (e.g. (seed, epoch, rank) or (seed, image, ckpt))."""
    ss = np.random.SeedSequence([int(p) for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


# torch's own default as this process started: its physical cores, or OMP_NUM_THREADS / MKL_NUM_THREADS where set
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def positive_count(text: str | None) -> int | None:
    """``text`` as a positive integer (an environment variable's value), None when it is not one."""
    text = (text or "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def make_jobs(makeflags: str, cores: int) -> int:
    """How many jobs the GNU make that started this process may run at once, read from its ``MAKEFLAGS``
    (``" -j2 --jobserver-auth=3,4"``): N for ``-jN``, ``cores`` for an unbounded ``-j``, 1 outside a parallel
    make."""
    jobs = 1
    for word in makeflags.split():
        if word == "--":  # the variables given on make's command line follow
            break
        if word.startswith("-j") or word == "--jobs" or word.startswith("--jobs="):
            count = word.removeprefix("--jobs=").removeprefix("--jobs").removeprefix("-j")
            jobs = int(count) if count.isdigit() and int(count) > 0 else cores
    return jobs


def concurrent_processes(env, cores: int) -> int:
    """How many kdq processes share this machine's cores: torchrun's processes on this node (``LOCAL_WORLD_SIZE``,
    else ``WORLD_SIZE``), or the jobs of the parallel make that runs this one; 1 otherwise."""
    ranks = positive_count(env.get("LOCAL_WORLD_SIZE")) or positive_count(env.get("WORLD_SIZE")) or 1
    return max(ranks, make_jobs(env.get("MAKEFLAGS", ""), cores))


def default_threads(env=None, cores: int | None = None) -> int:
    """``--threads``' default (auto): ``OMP_NUM_THREADS`` where it is set (the user's choice per process, or
    torchrun's 1); else the ``cores`` (torch's default: the physical cores) shared by the processes that run at
    once (:func:`concurrent_processes`: torchrun's ranks, a parallel make's jobs), at least 1 each.  Two processes
    of two threads on two cores take turns on them (OpenMP threads spin while they wait for each other): one thread
    each is faster (docs/performance.md, Threads)."""
    env = os.environ if env is None else env
    cores = TORCH_DEFAULT_THREADS if cores is None else cores
    given = positive_count(env.get("OMP_NUM_THREADS"))
    if given is not None:
        return given
    return max(1, cores // concurrent_processes(env, cores))


def use_threads(config):
    """The start of every stage: set torch's CPU threads to ``config.threads`` (None: :func:`default_threads`)
    and return the config with the count it runs with, which its run.json records (a runtime setting:
    ``--resume`` accepts another).  The setting is process-wide and stays after the stage returns (as
    ``--deterministic``'s).  Inter-op threads are left alone: eager stages do not use them, and torch refuses to
    set them twice in a process."""
    threads = default_threads() if config.threads is None else config.threads
    torch.set_num_threads(threads)
    return config.replace(threads=threads)


def set_deterministic(enabled: bool) -> None:
    """Opt-in deterministic algorithms (slower on CUDA); cuDNN autotuning off."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op without a deterministic CUDA kernel (adaptive_avg_pool2d's backward, which the σ
        # gradient and VGG training pass through) warns instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
