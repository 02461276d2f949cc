"""kdq: explain knowledge distillation by quantifying the knowledge inside a network (Cheng et al., CVPR 2020).

The repository is the package ``kdq``: ``kdq.models`` (the registry of architectures and their layer taps) and
``kdq.function`` (the library behind the four stage scripts).  The Python API, for any ``nn.Module``:

* :func:`kdq.fit_sigma` — σ maps at any named submodule (docs/method.md §2), with :class:`kdq.SigmaConfig`;
* :class:`kdq.WeightDistance` — the weight-distance callback for your own training loop (docs/method.md §1);
* :func:`kdq.compare` — the metrics of docs/method.md §3 on in-memory maps, with a report.

Heavy dependencies (torch, torchvision) are imported only when one of these is first used, so that
``import kdq.function.cli`` (every script's ``--help``) stays fast.  The method: docs/method.md.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {"fit_sigma": "kdq.function.api", "compare": "kdq.function.api", "SigmaResult": "kdq.function.api",
        "SigmaConfig": "kdq.function.sigma.config", "Tokens": "kdq.function.sigma.units",
        "Points": "kdq.function.sigma.units", "WeightDistance": "kdq.function.train.weight_distance"}
__all__ = ["__version__", *_API]
_SUBPACKAGES = ("function", "models")


def __dir__() -> list[str]:
    """The public names (the API, loaded on first use, and the subpackages), so that they tab-complete."""
    return sorted({*__all__, *_SUBPACKAGES, *(name for name in globals() if name.startswith("__"))})


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:  # a subpackage not imported yet
        return importlib.import_module(f"kdq.{name}")
    raise AttributeError(f"module 'kdq' has no attribute {name!r}")
