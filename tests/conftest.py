"""Fixtures shared by the test modules: a tiny embedded dataset and a one-thread torch (helpers are in
``tests/helpers.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdq.function.data.synthetic import write_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """4 classes, 32 px images (resized to 64 by the tiny nets), a few images per split."""
    root = tmp_path_factory.mktemp("data") / "embedded"
    write_dataset(root, seed=0, size=32, num_classes=4, per_class={"teacher": 8, "train": 4, "val": 2})
    return root


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny fits run faster on one thread than two on a shared machine (and match torchrun's ranks); a stage run
    in-process keeps it (its --threads default reads OMP_NUM_THREADS)."""
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
