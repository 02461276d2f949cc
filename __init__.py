"""kdq: explain knowledge distillation by quantifying the knowledge inside a network (Cheng et al., CVPR 2020).

The repository is the ``kdq`` package: ``kdq.models`` (the registry of architectures and their layer taps)
and ``kdq.function`` (the library behind the four stage scripts).  Heavy dependencies (torch, torchvision)
are imported only when a name that needs them is used, so ``import kdq.function.cli`` stays cheap.
"""
__version__ = "0.1.0"
