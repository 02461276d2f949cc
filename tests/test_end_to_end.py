"""The whole study at a tiny scale, every stage through its command line (issue 7): data → teacher →
label net → distilled student → sigma maps of both → metrics report with all six metrics for both nets."""
from __future__ import annotations

import json
import math

import pytest

from kdq.function.metrics.measures import METRICS
from tests.helpers import run_script

pytestmark = pytest.mark.slow

TRAIN = ("--arch", "vgg_tiny", "--batch-size", 8, "--lr", 0.02, "--device", "cpu", "--val-split", "val")
SIGMA = ("--arch", "vgg_tiny", "--layer", "fc1", "--split", "train", "--pic-num", 8, "--effect-num", 8,
         "--samples", 4, "--steps", 6, "--break-steps", 2, "--grid", 4, "--effective-rule", "off",
         "--batch-images", 4, "--no-progress", "--device", "cpu")


def test_every_stage_through_its_cli(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    data = ("--data", tiny_data)
    assert run_script("train_net/train_net.py", *TRAIN, *data, "--split", "teacher", "--epochs", 2,
                      "--checkpoints", 2, "--out", runs / "teacher") == 0
    assert run_script("train_net/train_net.py", *TRAIN, *data, "--split", "train", "--epochs", 3,
                      "--checkpoints", 0, 1, 2, 3, "--out", runs / "label") == 0
    assert run_script("distillation/distillation.py", "--teacher_checkpoint", runs / "teacher" / "2.pth.tar",
                      "--teacher-arch", "vgg_tiny", *TRAIN, *data, "--split", "train", "--layer", "fc1",
                      "--epochs", 3, "--finetune-epochs", 1, "--checkpoints", 0, 1, 2, 3,
                      "--out", runs / "distil") == 0
    for net in ("label", "distil"):
        assert run_script("sigma/train_sigma.py", "--checkpoint_root", runs / net, *SIGMA, *data,
                          "--out", runs / f"sigma_{net}") == 0
    assert run_script("sigma/find_knowledge_new.py", "--label-sigma", runs / "sigma_label",
                      "--distil-sigma", runs / "sigma_distil", "--label-run", runs / "label",
                      "--distil-run", runs / "distil", *data, "--split", "train", "--layer", "fc1",
                      "--bootstrap", 50, "--out", runs / "metrics") == 0

    result = json.loads((runs / "metrics" / "metrics.json").read_text())
    rows = {row["metric"]: row for row in result["table"] if row["layer"] == "fc1"}
    for metric in METRICS:
        assert metric.key in rows, metric.key
        for net in ("label", "distil"):
            assert math.isfinite(float(rows[metric.key][net])), (metric.key, net)
    report = (runs / "metrics" / "report.md").read_text()
    for metric in METRICS:
        assert f"| fc1 | {metric.label} |" in report, metric.label
    assert len(list((runs / "metrics" / "figures").glob("*.png"))) == 4

    # the study's combined report: every metrics run's table, one row per (run, layer, metric)
    assert run_script("summarize_runs", runs, "--report", runs / "report.md") == 0
    combined = (runs / "report.md").read_text()
    for metric in METRICS:
        assert f"| metrics | fc1 | {metric.key} |" in combined, metric.key
    for stage in ("train_net", "distillation", "train_sigma"):
        assert f"| {stage} |" in combined, stage
