"""torchrun on CPU (gloo): 2 ranks train to the same weights as 1 process with the same global batch."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from kdq.function.io.checkpoint import load_checkpoint
from tests.helpers import ROOT, run_script

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, script: str, *argv) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(ROOT / script), *map(str, argv)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_two_ranks_match_one_process(tiny_data, tmp_path):
    common = ["--arch", "vgg_tiny", "--data", tiny_data, "--split", "train", "--val-split", "val",
              "--epochs", 2, "--batch-size", 8, "--dropout", 0, "--device", "cpu", "--checkpoints", 0, 1, 2]
    single, double = tmp_path / "one", tmp_path / "two"
    assert run_script("train_net/train_net.py", *common, "--out", single) == 0
    proc = torchrun(2, "train_net/train_net.py", *common, "--out", double)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for epoch in (0, 1, 2):
        a = load_checkpoint(single / f"{epoch}.pth.tar")["state_dict"]
        b = load_checkpoint(double / f"{epoch}.pth.tar")["state_dict"]
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=f"epoch {epoch} {key}")
    np.testing.assert_allclose(np.load(single / "weight_diff.npy"), np.load(double / "weight_diff.npy"),
                               rtol=1e-3)
    # rank 0 alone writes: no stray files from rank 1
    assert sorted(p.name for p in double.iterdir()) == sorted(p.name for p in single.iterdir())
