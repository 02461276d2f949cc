"""Shared fixtures: a tiny embedded dataset and a helper that runs a stage script in-process."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from function.make_dataset import write_dataset

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """4 classes, 32 px images (resized to 64 by the tiny nets), a few images per split."""
    root = tmp_path_factory.mktemp("data") / "embedded"
    write_dataset(root, seed=0, size=32, num_classes=4, per_class={"teacher": 8, "train": 4, "val": 2})
    return root


@pytest.fixture
def one_thread():
    """Tiny fits run faster on one thread than two on a shared machine (and match torchrun's ranks)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_script(relpath: str):
    """Import a stage script (e.g. 'train_net/train_net.py') as a module, without running it."""
    path = ROOT / relpath
    name = "kdq_script_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_script(relpath: str, *argv: str) -> int:
    """Run a script's ``main`` through ``function.cli.run`` in-process; returns the exit status."""
    from function.cli import run

    module = load_script(relpath)
    return run(module.get_args_parser, module.main, [str(a) for a in argv])
