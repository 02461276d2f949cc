"""Shared building blocks of the kdq stages: data, checkpoints, training loops, the sigma fit and
the metrics.  Each module is named for what it holds; scripts only wire them together."""
