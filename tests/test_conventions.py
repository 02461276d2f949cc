"""Conventions users expect (issue 16): ``--help`` without importing torch, ``--device auto`` (CUDA, then MPS, then
the CPU), and progress that stays readable in a log file."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from kdq.function import runtime
from kdq.function.cli import UserError
from kdq.function.progress import PlainProgress, progress
from tests.helpers import ROOT, run_script

SCRIPTS = ["train_net/train_net.py", "distillation/distillation.py", "sigma/train_sigma.py",
           "sigma/find_knowledge_new.py", "supplement/train_teacher.py", "supplement/distill_long.py",
           "function/stages/make_dataset.py", "function/stages/prepare_data.py", "function/stages/summarize_runs.py",
           "function/stages/weight_distance.py"]
HELP_WITHOUT_TORCH = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
heavy = sorted(m for m in ("torch", "torchvision", "matplotlib") if m in sys.modules)
print("imported:", *heavy)
"""


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_neither_torch_nor_matplotlib(script):
    done = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH, script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("imported:"), done.stdout[-300:]
    assert done.stdout.startswith("usage: ")


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda:1"), (False, True, "mps"), (False, False, "cpu")])
def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(runtime, "mps_available", lambda: mps)
    assert str(runtime.resolve_device("auto", local_rank=1)) == expected


@pytest.mark.parametrize("name, expected", [("cuda", "CUDA is not available"), ("cuda:0", "CUDA is not available"),
                                            ("mps", "MPS is not available"), ("meta", "choose auto, cpu"),
                                            ("tpu", "choose auto, cpu"), ("cpu:x", "--device cpu:x")])
def test_unusable_devices_are_one_line_errors(monkeypatch, name, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "mps_available", lambda: False)
    with pytest.raises(UserError) as err:
        runtime.resolve_device(name)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_cuda_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="has 2 CUDA device"):
        runtime.resolve_device("cuda:2")


def test_progress_off_a_terminal_is_plain_lines(capsys):
    bar = progress(range(5), desc="epochs")
    assert isinstance(bar, PlainProgress)  # capsys's stderr is not a terminal
    bar.interval = 0.0  # print at every update
    for _ in bar:
        bar.set_postfix(loss=0.5)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("epochs: 1/5 (20%), 00:00:00 elapsed, loss=0.5")
    assert lines[-1].startswith("epochs: 5/5 (100%)")
    assert "\r" not in err and "\x1b" not in err


def test_inner_bars_and_no_progress_print_nothing(capsys):
    for _ in progress(range(3), desc="inner", leave=False):
        pass
    for _ in progress(range(3), desc="off", enabled=False):
        pass
    assert capsys.readouterr().err == ""


def test_a_stage_writes_plain_progress_lines_and_none_with_no_progress(tmp_path, capsys):
    flags = ("--num-classes", 2, "--image-size", 16, "--teacher-per-class", 2, "--train-per-class", 2,
             "--val-per-class", 1)
    assert run_script("make_dataset", "--out", tmp_path / "a", *flags) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err and "100%" in err
    assert run_script("make_dataset", "--out", tmp_path / "b", *flags, "--no-progress") == 0
    assert "%" not in capsys.readouterr().err


class FakeWriter:
    """Stands in for torch's SummaryWriter (the tensorboard package is an optional extra)."""
    made: list["FakeWriter"] = []

    def __init__(self, log_dir: str):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_scalars_of_a_training_run(tiny_data, tmp_path, monkeypatch, one_thread):
    from kdq.function.train import engine, stage

    FakeWriter.made.clear()
    monkeypatch.setattr(engine, "summary_writer_class", lambda: FakeWriter)
    monkeypatch.setattr(stage, "summary_writer_class", lambda: FakeWriter)
    assert run_script("train_net/train_net.py", "--arch", "vgg_tiny", "--data", tiny_data, "--split", "train",
                      "--val-split", "val", "--epochs", 2, "--checkpoints", 2, "--batch-size", 8, "--device", "cpu",
                      "--no-progress", "--tensorboard", tmp_path / "tb", "--out", tmp_path / "run") == 0
    (writer,) = FakeWriter.made
    assert writer.log_dir == str(tmp_path / "tb" / "train") and writer.closed
    tags = {tag for tag, _ in writer.scalars}
    assert {"train/loss", "train/acc1", "train/lr", "train/val_loss", "train/val_acc1"} <= tags, tags
    assert {f"weight_distance/{layer}" for layer in ("conv", "fc1", "fc2", "fc3")} <= tags
    assert sorted({step for _, step in writer.scalars}) == [1, 2]


def test_tensorboard_without_the_package_is_one_line_before_anything_is_written(tiny_data, tmp_path, capsys):
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("the tensorboard package is installed here")
    assert run_script("train_net/train_net.py", "--arch", "vgg_tiny", "--data", tiny_data, "--split", "train",
                      "--epochs", 1, "--device", "cpu", "--tensorboard", tmp_path / "tb",
                      "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tensorboard needs the tensorboard package" in err[0], err
    assert not (tmp_path / "run").exists() and not (tmp_path / "tb").exists()
