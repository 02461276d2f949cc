"""--threads (issue 26): every stage's flag, the default rule (auto: OMP_NUM_THREADS, else the cores shared out among
torchrun's ranks or a parallel make's jobs), the count a stage runs with, recorded in run.json as a runtime setting."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from kdq.function.runtime import concurrent_processes, default_threads, make_jobs
from kdq.function.stages import stage
from tests.helpers import one_error_line, run_script
from tests.test_config import MINIMAL

# the stages and the supplement's entry points (the same stages with other defaults), with the flags they need
DISTIL = MINIMAL["distillation"][1] + ["--layer", "fc1"]
STAGES = {**{name: argv for name, (_, argv) in MINIMAL.items()}, "distillation": DISTIL,
          "supplement_teacher": MINIMAL["train_net"][1], "supplement_distill_long": DISTIL}


@pytest.fixture
def restore_threads():
    """A stage sets torch's threads for the whole process: put them back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---- the default rule, on mocked environments ------------------------------------------------------------------

@pytest.mark.parametrize("env, cores, expected", [
    ({}, 2, 2),  # alone: every core
    ({}, 16, 16),
    ({"OMP_NUM_THREADS": "3"}, 2, 3),  # the user's choice per process, even above the cores
    ({"OMP_NUM_THREADS": "1", "MAKEFLAGS": " -j4"}, 16, 1),  # torchrun sets 1 itself: it wins
    ({"OMP_NUM_THREADS": "zero"}, 2, 2),  # not a count: ignored (torch ignores it too)
    ({"OMP_NUM_THREADS": "0"}, 4, 4),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, 2, 1),  # two ranks on two cores: one each
    ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2"}, 16, 8),  # 2 ranks on this node of a 4-node run
    ({"WORLD_SIZE": "4"}, 2, 1),  # more ranks than cores: still 1 each
    ({"MAKEFLAGS": " -j2 --jobserver-auth=3,4"}, 2, 1),  # make -j2 on two cores
    ({"MAKEFLAGS": " -j2 --jobserver-auth=3,4"}, 16, 8),
    ({"MAKEFLAGS": "s -j"}, 16, 1),  # unbounded -j: as many jobs as cores
    ({"MAKEFLAGS": " -j1"}, 2, 2),  # -j1: one job at a time
    ({"MAKEFLAGS": "n"}, 2, 2),
    ({"MAKEFLAGS": "w -- CFLAGS=-j4"}, 2, 2),  # a variable given to make, not its -j
    ({"MAKEFLAGS": " -j3", "WORLD_SIZE": "2"}, 12, 4),  # the larger of the two counts
])
def test_default_threads_rule(env, cores, expected):
    assert default_threads(env, cores) == expected


def test_concurrent_processes_and_make_jobs_by_hand():
    assert make_jobs("", 4) == 1 and make_jobs(" -j5 --jobserver-auth=fifo:/tmp/x", 4) == 5
    assert make_jobs("k --jobs=6", 4) == 6 and make_jobs(" -j", 7) == 7
    assert concurrent_processes({"LOCAL_WORLD_SIZE": "3", "WORLD_SIZE": "6"}, 8) == 3
    assert concurrent_processes({"WORLD_SIZE": "x"}, 8) == 1


def test_make_jobs_reads_the_makeflags_gnu_make_passes(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    (tmp_path / "Makefile").write_text("all:\n\t@printf '%s' \"$$MAKEFLAGS\"\n")

    def flags(*args: str) -> str:
        done = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert make_jobs(flags("-j3"), 2) == 3
    assert make_jobs(flags("-j", "X=-j5"), 2) == 2
    assert make_jobs(flags(), 2) == 1 and make_jobs(flags("-j1"), 2) == 1


# ---- the flag of every stage --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_parses_threads(name, capsys):
    parser = stage(name).get_args_parser()
    assert parser.parse_args(STAGES[name]).threads is None  # auto
    assert parser.parse_args(STAGES[name] + ["--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parser.parse_args(STAGES[name] + ["--threads", "0"])
    assert "argument --threads: must be a positive integer, got 0" in capsys.readouterr().err
    assert "threads" in type(parser.parse_args(STAGES[name])).runtime_settings()  # --resume accepts another


class Started(Exception):
    """Raised by the first step a stage takes after setting its threads."""


# the first call each stage's main makes after use_threads (module, attribute)
FIRST_STEP = {"train_net": ("kdq.function.archs", "resolve_arch"),
              "supplement_teacher": ("kdq.function.archs", "resolve_arch"),
              "distillation": ("kdq.function.stages.distillation", "plan_run"),
              "supplement_distill_long": ("kdq.function.stages.distillation", "plan_run"),
              "train_sigma": ("kdq.function.io.rundir", "check_out_apart"),
              "find_knowledge": ("kdq.function.io.rundir", "check_out_apart")}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_sets_its_threads_first(name, monkeypatch, restore_threads):
    import importlib

    seen = []

    def first_step(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise Started

    module, attribute = FIRST_STEP[name]
    monkeypatch.setattr(importlib.import_module(module), attribute, first_step)
    module = stage(name)
    parser = module.get_args_parser()
    for given, expected in ((["--threads", "3"], 3), (["--threads", "1"], 1)):
        with pytest.raises(Started):
            module.main(parser.parse_args(STAGES[name] + given))
        assert seen[-1] == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the default: OMP_NUM_THREADS where set
    with pytest.raises(Started):
        module.main(parser.parse_args(STAGES[name]))
    assert seen == [3, 1, 2]


# ---- what a run records, and --resume ------------------------------------------------------------------------------

def _settings(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["settings"]


def test_run_json_records_the_count_and_resume_accepts_another(tiny_data, tmp_path, monkeypatch, capsys,
                                                               restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    train = tmp_path / "label"
    common = ("--arch", "vgg_tiny", "--data", tiny_data, "--val-split", "none", "--epochs", "2", "--checkpoints",
              "all", "--batch-size", "8", "--lr", "0.02", "--device", "cpu", "--no-progress", "--out", train)
    assert run_script("train_net", *common, "--epochs", "1") == 0
    assert _settings(train)["threads"] == 2  # auto, resolved: an integer, not None
    # extended by one epoch with another count: accepted, recorded, applied
    assert run_script("train_net", *common, "--threads", "1", "--resume") == 0
    assert _settings(train)["threads"] == 1 and torch.get_num_threads() == 1
    assert (train / "2.pth.tar").is_file()

    sigma = tmp_path / "sigma"
    flags = ("--checkpoint_root", train, "--arch", "vgg_tiny", "--layer", "fc1", "--data", tiny_data, "--pic-num",
             "2", "--effect-num", "2", "--samples", "4", "--steps", "4", "--break-steps", "1", "--device", "cpu",
             "--no-progress", "--out", sigma)
    assert run_script("train_sigma", *flags, "--threads", "3") == 0
    assert _settings(sigma)["threads"] == 3 and torch.get_num_threads() == 3
    capsys.readouterr()
    assert run_script("train_sigma", *flags, "--threads", "1", "--resume") == 0, capsys.readouterr().err
    assert _settings(sigma)["threads"] == 1
    # a setting that defines results is still refused, and the message does not name --threads
    assert run_script("train_sigma", *flags, "--threads", "2", "--seed", "1", "--resume") == 2
    line = one_error_line(capsys)
    assert "--seed" in line and "--threads" not in line
