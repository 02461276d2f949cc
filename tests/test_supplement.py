"""supplement/: thin entry points over train_net and distillation with the supplement's defaults."""
from __future__ import annotations

import json

from kdq.function.io.checkpoint import list_checkpoints
from kdq.function.train.schedules import PAPER_400, parse_epochs
from tests.helpers import load_script, run_script


def test_heavy_teacher_defaults():
    args = load_script("supplement/train_teacher.py").get_args_parser().parse_args(
        ["--arch", "vgg_tiny", "--data", "d", "--out", "o"])
    # the original's train_net_supplement.py (mode _augment): heavy augmentation, wd 5e-4, lr 1e-2 log-spaced
    assert args.augment == "heavy" and args.weight_decay == 5e-4 and args.lr == 0.01
    assert args.lr_schedule == "logspace" and args.epochs == 150 and args.pretrained is None


def test_long_distillation_defaults():
    parser = load_script("supplement/distill_long.py").get_args_parser()
    args = parser.parse_args(["--teacher_checkpoint", "t", "--teacher-arch", "vgg16", "--arch", "vgg16",
                              "--layer", "conv", "--data", "d", "--out", "o"])
    assert args.epochs == 400 and args.checkpoints == ["paper"]
    assert parse_epochs(args.checkpoints, args.epochs) == list(PAPER_400)
    assert args.finetune_epochs == 100 and args.method == "feature"
    # the original's distillation_supplement.py: lr 1e-3 constant, wd 5e-4, no augmentation
    assert args.lr == 1e-3 and args.lr_schedule == "constant" and args.weight_decay == 5e-4
    assert args.augment == "none"


def test_heavy_teacher_then_long_distillation_run(tiny_data, tmp_path):
    """One epoch each: the entry points run the shared stages and record the supplement's settings."""
    teacher = tmp_path / "teacher"
    assert run_script("supplement/train_teacher.py", "--arch", "vgg_tiny", "--data", tiny_data, "--split", "teacher",
                      "--val-split", "none", "--epochs", 1, "--batch-size", 8, "--checkpoints", 1,
                      "--device", "cpu", "--out", teacher) == 0
    settings = json.loads((teacher / "run.json").read_text())["settings"]
    assert settings["augment"] == "heavy" and settings["weight_decay"] == 5e-4
    out = tmp_path / "long"
    assert run_script("supplement/distill_long.py", "--teacher_checkpoint", teacher / "1.pth.tar",
                      "--teacher-arch", "vgg_tiny", "--arch", "vgg_tiny", "--layer", "fc1", "--data", tiny_data,
                      "--val-split", "none", "--epochs", 2, "--finetune-epochs", 0, "--batch-size", 8,
                      "--device", "cpu", "--out", out) == 0
    assert list(list_checkpoints(out)) == [0, 1, 2]  # 'paper' scaled to 2 epochs
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
