"""Devices, seeds and torch.distributed (torchrun) set-up.

Distributed runs are launched with ``torchrun``; :func:`init_distributed` reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment, so the scripts need no flag for it.
Backend: NCCL on CUDA, gloo on CPU.  Rank 0 is the only writer (:attr:`Dist.is_main`).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

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


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Initialise the process group when launched by torchrun; return the rank info and the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local), device


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


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on ``parts`` (e.g. (seed, epoch, rank) or (seed, image, ckpt))."""
    ss = np.random.SeedSequence([int(p) for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def set_deterministic(enabled: bool) -> None:
    """Opt-in deterministic algorithms (slower on CUDA); cuDNN autotuning off."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op without a deterministic CUDA kernel (adaptive_avg_pool2d's backward, which the σ
        # gradient and VGG training pass through) warns instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
