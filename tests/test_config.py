"""The typed configs of the stages (kdq.function.config): the parser is built from the config, parse_args returns
it, each field's range rule applies to flags and to configs made in Python, and "defines results" is one rule that
--resume reads from the fields."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kdq.function.checks import CheckError
from kdq.function.cli import UserError
from kdq.function.io.rundir import check_resume_settings
from kdq.function.metrics.config import MetricsConfig
from kdq.function.sigma.config import SigmaConfig, SigmaRunConfig
from kdq.function.stages import stage
from kdq.function.train.config import DistillConfig, TrainConfig

MINIMAL = {
    "train_net": (TrainConfig, ["--arch", "vgg_tiny", "--data", "d", "--out", "o"]),
    "distillation": (DistillConfig, ["--teacher_checkpoint", "t.pth.tar", "--arch", "vgg_tiny", "--data", "d",
                                     "--out", "o"]),
    "train_sigma": (SigmaRunConfig, ["--checkpoint_root", "r", "--layer", "fc1", "--data", "d", "--out", "o"]),
    "find_knowledge": (MetricsConfig, ["--label-sigma", "a", "--distil-sigma", "b", "--data", "d", "--out", "o"]),
}


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_parse_args_returns_the_config_with_its_defaults(name):
    config, argv = MINIMAL[name]
    args = stage(name).get_args_parser().parse_args(argv)
    assert type(args) is config
    given = {"arch", "data", "out", "teacher_checkpoint", "checkpoint_root", "layer", "label_sigma", "distil_sigma"}
    for f in dataclasses.fields(config):
        if f.name not in given:
            assert getattr(args, f.name) == config.defaults()[f.name], f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.seed = 3


def test_the_papers_defaults_are_read_from_the_configs():
    # docs/method.md §1–§3, written out by hand
    assert (TrainConfig.lr, TrainConfig.epochs, TrainConfig.lr_schedule, TrainConfig.batch_size) == \
        (1e-3, 150, "logspace", 64)
    assert (DistillConfig.lr, DistillConfig.lr_schedule, DistillConfig.finetune_epochs) == (0.01, "constant", 100)
    assert (SigmaRunConfig.grid, SigmaRunConfig.samples, SigmaRunConfig.steps, SigmaRunConfig.break_steps,
            SigmaRunConfig.lr, SigmaRunConfig.sigma0, SigmaRunConfig.target_entropy) == (16, 96, 80, 20, 1e-4, 0.01,
                                                                                         -2.8)
    assert (MetricsConfig.b, MetricsConfig.bootstrap, MetricsConfig.level) == (0.2, 1000, 0.95)


def test_the_stages_fit_settings_are_the_apis():
    run = SigmaRunConfig(checkpoint_root=Path("r"), layer="fc1", data=Path("d"), out=Path("o"))
    assert run.fit("vgg") == SigmaConfig(lam=7.0)
    assert run.fit("resnet") == SigmaConfig(lam=6.0)
    assert run.replace(lam=2.0, steps=30).fit("resnet") == SigmaConfig(lam=2.0, steps=30)


def test_a_config_made_in_python_is_checked_as_the_flag_is(capsys):
    with pytest.raises(CheckError, match=r"^lr must be positive, got -1"):
        TrainConfig(lr=-1.0)
    with pytest.raises(CheckError, match=r"^dropout must be in \[0, 1\), got 1"):
        DistillConfig(dropout=1.0)
    with pytest.raises(SystemExit):
        stage("train_net").get_args_parser().parse_args(MINIMAL["train_net"][1] + ["--lr", "-1"])
    assert "argument --lr: must be positive, got -1" in capsys.readouterr().err


def test_defines_results_is_read_from_the_fields():
    # the sigma stage's settings that change its files (the allowlist it had before the configs, by hand)
    assert set(SigmaRunConfig.result_settings()) == {
        "checkpoint_root", "data", "modality", "arch", "taps", "image_size", "layer", "split", "grid", "samples",
        "steps", "break_steps", "lr", "sigma0", "target_entropy", "lam", "seed", "pic_seed", "foreground", "missing_mask",
        "exact_masks", "mask_pad", "amp", "effective_rule", "effective_start"}
    # the training stages' runtime settings (the denylist they had before)
    runtime = {"out", "resume", "overwrite", "debug", "device", "workers", "progress", "deterministic",
               "tensorboard", "save_optimizer", "threads"}
    for config in (TrainConfig, DistillConfig):
        assert config.runtime_settings() == runtime
        assert set(config.result_settings()) == {f.name for f in dataclasses.fields(config)} - runtime
    assert TrainConfig.growable_settings() == {"epochs"} and DistillConfig.growable_settings() == frozenset()


def _recorded_run(tmp_path: Path, config) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()}
    (run / "run.json").write_text(json.dumps({"stage": "train_net", "settings": settings}))
    return run


def test_resume_refuses_another_result_setting_and_accepts_another_runtime_one(tmp_path):
    made = TrainConfig(arch="vgg_tiny", data=Path("d"), out=tmp_path / "run", epochs=3)
    run = _recorded_run(tmp_path, made)
    check_resume_settings(run, made.replace(device="cuda", workers=4, progress=False))  # runtime: accepted
    check_resume_settings(run, made.replace(epochs=5))  # growable: extending the training
    with pytest.raises(UserError, match=r"--lr: 0\.001 → 0\.02"):
        check_resume_settings(run, made.replace(lr=0.02))
    with pytest.raises(UserError, match=r"--epochs: 3 → 2"):
        check_resume_settings(run, made.replace(epochs=2))


def test_the_supplement_entry_points_are_their_stages_configs_with_other_defaults():
    args = stage("supplement_teacher").get_args_parser().parse_args(MINIMAL["train_net"][1])
    assert type(args) is TrainConfig and (args.augment, args.weight_decay, args.lr) == ("heavy", 5e-4, 0.01)
    args = stage("supplement_distill_long").get_args_parser().parse_args(MINIMAL["distillation"][1])
    assert type(args) is DistillConfig and (args.epochs, args.augment) == (400, "none")


def test_a_stage_runs_from_python_with_its_config(tiny_data, tmp_path):
    """``main(config)`` is the stage (what docs/stages.md shows): the run records the config's settings."""
    config = TrainConfig(arch="vgg_tiny", data=tiny_data, out=tmp_path / "run", epochs=1, checkpoints=["all"],
                         batch_size=8, device="cpu", val_split="none", progress=False, lr=0.02)
    stage("train_net").main(config)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "complete" and (tmp_path / "run" / "1.pth.tar").is_file()
    assert record["settings"]["lr"] == 0.02 and record["settings"]["epochs"] == 1
    assert list(record["settings"]) == [f.name for f in dataclasses.fields(TrainConfig)]
