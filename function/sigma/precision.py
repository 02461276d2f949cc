"""The precision of the σ fit's forward pass on the CPU: whether this CPU has bf16 units, what ``--amp`` warns, and
the truncated net cast to bf16 once (docs/performance.md, "bf16 on the CPU").

On a CPU with bf16 matrix units (Intel AMX ``amx_bf16`` from Sapphire Rapids on, ``avx512_bf16`` from Cooper Lake
and AMD Zen 4 on; Arm ``bf16`` from Neoverse V1/N2, e.g. AWS Graviton 3) oneDNN runs bf16 convolutions and matrix
products natively and the fit is several times faster than in fp32; elsewhere bf16 is emulated and slower than fp32.
fp32 stays the default: bf16 changes the maps slightly (measured in docs/performance.md).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
from torch import nn

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # /proc/cpuinfo flags of native bf16 units (x86, x86, Arm)
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The CPU's feature flags (the ``flags`` line on x86, ``Features`` on Arm) of ``cpuinfo`` (the text of
    /proc/cpuinfo; read from there when None), or None where there is no such file or line (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_has_bf16(flags: set[str] | None = None, onednn_bf16: bool | None = None) -> bool:
    """True when this CPU runs bf16 natively: oneDNN supports bf16 on it (``onednn_bf16``, default
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, which also says yes for AVX-512 CPUs that only emulate bf16)
    and its flags (``flags``, default :func:`cpu_flags`) name bf16 units (:data:`BF16_CPU_FLAGS`).  Flags that
    cannot be read (not Linux) leave the decision to oneDNN."""
    if onednn_bf16 is None:
        onednn_bf16 = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not onednn_bf16:
        return False
    flags = cpu_flags() if flags is None else flags
    return flags is None or any(flag in flags for flag in BF16_CPU_FLAGS)


def amp_warning(device_type: str, amp: str | None, has_bf16: Callable[[], bool] | None = None) -> str | None:
    """What ``--amp`` on ``device_type`` warns about, or None: nothing on CUDA, nothing for bf16 on a CPU with bf16
    units (``has_bf16()``, default :func:`cpu_has_bf16`, asked only then), a slow fit for bf16 on a CPU without
    them or fp16 on any CPU (torch has no fast fp16 convolutions there), and on any other device that autocast
    there is untested."""
    if amp is None or device_type == "cuda":
        return None
    if device_type == "cpu":
        if amp == "bf16":
            if (has_bf16 or cpu_has_bf16)():
                return None
            return ("--amp bf16 on a CPU without bf16 units (no amx_bf16 / avx512_bf16 in its flags): bf16 is "
                    "emulated there and the fit will be slower than in fp32; drop --amp")
        return f"--amp {amp} on the CPU: torch has no fast {amp} kernels there and the fit will be slow; use bf16"
    return f"--amp on {device_type} uses its autocast ({amp}); only CUDA and CPU bf16 are measured"


def bf16_copy(net: nn.Module, channels_last: bool = False) -> nn.Module:
    """A copy of ``net`` whose floating-point parameters and buffers are bf16 (4-d ones channels-last with
    ``channels_last``), sharing nothing with ``net``: the fit casts its truncated net once per call instead of
    autocast casting every weight at every forward and backward.  The copy is made without first copying the fp32
    tensors (each is cast straight into the copy)."""
    memo = {}
    for tensor in [*net.parameters(), *net.buffers()]:
        if tensor.is_floating_point() and id(tensor) not in memo:
            cast = tensor.detach().to(torch.bfloat16)
            if channels_last and cast.dim() == 4:
                cast = cast.contiguous(memory_format=torch.channels_last)
            memo[id(tensor)] = nn.Parameter(cast, requires_grad=False) if isinstance(tensor, nn.Parameter) else cast
    return copy.deepcopy(net, memo)
