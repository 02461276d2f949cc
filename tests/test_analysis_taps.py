"""Taps chosen at analysis time, a same-arch student that inherits the teacher's taps and size, and traps named where
they happen (issue 23, parts 2, 4 and 6)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch.nn.functional as F
from torch import nn

from kdq.function.archs import arch_from, resolve_arch, student_arch
from kdq.function.cli import UserError
from kdq.function.metrics.caveats import tap_warnings, training_warnings
from kdq.function.metrics.inputs import load_weight_diff
from kdq.function.sigma.run import zero_feature_note
from kdq.function.train.distill import phase1_warning
from tests.helpers import run_script

GATED = "tests.user_models:gated_net"
ZERO_BN = "tests.test_analysis_taps:zero_bn_net"
RECORDED = "conv=features.3:features.3.weight,fc3=fc3:fc3.weight"


class ZeroBNNet(nn.Module):
    """A conv whose BatchNorm starts at weight 0 (timm's zero-initialised last BN): at initialisation the BN's
    output is its bias, the same for every input; after a step of training it is not."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        nn.init.zeros_(self.bn.weight)
        nn.init.constant_(self.bn.bias, 0.1)  # the ReLU passes it: the BN learns (a bias of 0 would be a dead ReLU)
        self.fc3 = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc3(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


def zero_bn_net(num_classes: int) -> nn.Module:
    return ZeroBNNet(num_classes)


# ---- part 2: taps at analysis time ------------------------------------------------------------------------

def test_another_tap_than_the_run_recorded_is_allowed():
    record = {"model": {"arch": GATED, "taps": RECORDED, "image_size": 32}}
    args = SimpleNamespace(arch=None, taps="conv=features.0,fc3=fc3", image_size=None)
    info = arch_from(args, record, source="the run")
    assert info.taps["conv"].node == "features.0" and info.taps["conv"].weight == "features.0.weight"
    assert info.input_size == 32
    # left out, the recorded taps are taken; another image size is still refused
    assert arch_from(SimpleNamespace(arch=None, taps=None, image_size=None), record).taps["conv"].node == "features.3"
    with pytest.raises(UserError, match="--image-size 48 but the run was made with 32"):
        arch_from(SimpleNamespace(arch=None, taps=None, image_size=48), record, source="the run")


def sigma_record(arch, taps):
    return {"stage": "train_sigma", "model": {"arch": arch, "taps": taps}}


def test_sigma_runs_at_different_nodes_of_a_layer_warn_naming_both():
    label = {"runs/sigma_label": sigma_record(GATED, RECORDED)}
    other = {"runs/sigma_distil": sigma_record(GATED, "conv=features.0:features.0.weight,fc3=fc3:fc3.weight")}
    warnings = tap_warnings("conv", label, other)
    assert len(warnings) == 1
    assert "--label-sigma runs/sigma_label: features.3" in warnings[0]
    assert "--distil-sigma runs/sigma_distil: features.0" in warnings[0]
    assert tap_warnings("conv", label, {"runs/d": sigma_record(GATED, RECORDED)}) == []
    assert tap_warnings("fc3", label, other) == []  # the same node at fc3


def test_a_layer_the_training_run_did_not_tap_is_one_line_saying_what_to_do(tmp_path):
    wd = np.zeros((4, 3))
    wd[1] = np.nan  # fc1: not tapped by the training run
    np.save(tmp_path / "weight_diff.npy", wd)
    (tmp_path / "run.json").write_text(json.dumps({"stage": "train_net", "model": {"arch": GATED, "taps": RECORDED}}))
    with pytest.raises(UserError) as err:
        load_weight_diff(tmp_path, "--label-run", [0, 1, 2], 1)
    text = str(err.value)
    assert "recorded no weight distance for layer fc1" in text and "kdq-weight-distance" in text
    assert "\n" not in text
    np.testing.assert_array_equal(load_weight_diff(tmp_path, "--label-run", [0, 2], 0), [0, 0, 0])


# ---- part 4: a same-arch student inherits --------------------------------------------------------------------

def test_a_student_of_the_teachers_arch_takes_its_taps_and_size():
    teacher = resolve_arch(GATED, "conv=features.0,fc3=fc3", 32)
    args = SimpleNamespace(arch=GATED, taps=None, image_size=None)
    info = student_arch(args, resolve_arch(GATED), teacher)
    assert info.input_size == 32 and info.taps["conv"].node == "features.0"
    given = SimpleNamespace(arch=GATED, taps="conv=features.3,fc3=fc3", image_size=None)
    assert student_arch(given, resolve_arch(GATED, given.taps), teacher).taps["conv"].node == "features.3"
    small = resolve_arch("vgg_tiny", image_size=48)  # a registry arch: its own taps, the teacher's size
    args = SimpleNamespace(arch="vgg_tiny", taps=None, image_size=None)
    assert student_arch(args, resolve_arch("vgg_tiny"), small).input_size == 48
    other = SimpleNamespace(arch="vgg_tiny", taps=None, image_size=None)  # another arch inherits nothing
    assert student_arch(other, resolve_arch("vgg_tiny"), teacher).input_size == 64


# ---- part 6: traps -----------------------------------------------------------------------------------------------

def test_sigma_f2_zero_for_most_images_names_the_trap():
    plan = SimpleNamespace(info=resolve_arch(ZERO_BN, "conv=bn:conv.weight,fc3=fc3", 32), layer="conv")
    note = zero_feature_note(plan, {0: (4, 4), 1: (0, 4)})
    assert "epoch(s) 0 (4 of 4 fits)" in note and "node bn" in note and "BatchNorm" in note and "--taps" in note
    assert zero_feature_note(plan, {0: (2, 4), 1: (0, 4)}) is None  # half is not most


def test_a_flat_phase1_warns_in_the_report_and_at_the_end_of_distillation(tmp_path):
    log = [{"epoch": 1, "val_mse": 7e-6}, {"epoch": 2, "val_mse": 7e-6}, {"epoch": 3, "val_mse": 7.000001e-6}]
    (tmp_path / "distil").mkdir()
    (tmp_path / "distil" / "distill_log.json").write_text(json.dumps(log))
    warnings = training_warnings({}, {tmp_path / "distil": {"stage": "distillation"}})
    assert len(warnings) == 1 and "learned nothing in phase 1" in warnings[0] and "stayed flat" in warnings[0]
    assert "stayed flat from 7e-06 (epoch 1) to 7e-06 (epoch 3)" in phase1_warning(log)
    assert phase1_warning([{"epoch": 1, "val_mse": 3.0}, {"epoch": 2, "val_mse": 2.0}]) is None
    at_zero = [{"epoch": 1, "val_mse": 8e-14}, {"epoch": 2, "val_mse": 8e-13}]  # numerically zero throughout
    assert "stayed flat" in phase1_warning(at_zero)


# ---- end to end (slow) -------------------------------------------------------------------------------------------

COMMON = ("--batch-size", 8, "--lr", 0.01, "--device", "cpu", "--val-split", "val", "--no-progress")
FIT = ("--split", "train", "--pic-num", 4, "--effect-num", 4, "--samples", 4, "--steps", 4, "--break-steps", 1,
       "--grid", 4, "--effective-rule", "off", "--batch-images", 2, "--no-progress", "--device", "cpu")


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_taps_chosen_at_analysis_time_end_to_end(tiny_data, tmp_path, one_thread):
    runs, data = tmp_path / "runs", ("--data", tiny_data)
    model = ("--arch", GATED, "--taps", "conv=features.3,fc3=fc3", "--image-size", 32)
    assert run_script("train_net", *model, *COMMON, *data, "--split", "teacher", "--epochs", 1, "--checkpoints", 1,
                      "--out", runs / "teacher") == 0
    assert run_script("train_net", *model, *COMMON, *data, "--split", "train", "--epochs", 2, "--checkpoints", 0, 1, 2,
                      "--out", runs / "label") == 0
    # another teacher tap than its run recorded; the student (the teacher's arch) gives neither taps nor size
    assert run_script("distillation", "--teacher_checkpoint", runs / "teacher" / "1.pth.tar", "--teacher-taps",
                      "conv=features.0,fc3=fc3", "--arch", GATED, *COMMON, *data, "--split", "train", "--layer", "conv",
                      "--epochs", 2, "--finetune-epochs", 1, "--checkpoints", 0, 1, 2, "--out", runs / "distil") == 0
    distil = read_json(runs / "distil" / "run.json")
    assert distil["model"]["image_size"] == 32 and distil["model"]["taps"].startswith("conv=features.0:")
    assert distil["teacher"]["model"]["taps"].startswith("conv=features.0:")
    # the label run's sigma at another tap than it was trained with, and at its own
    for name, taps in (("label_f0", ("--taps", "conv=features.0,fc3=fc3")), ("label_f3", ())):
        assert run_script("train_sigma", "--checkpoint_root", runs / "label", *taps, "--layer", "conv", *FIT, *data,
                          "--out", runs / name) == 0
    assert read_json(runs / "label_f0" / "run.json")["model"]["taps"].startswith("conv=features.0:")
    assert run_script("train_sigma", "--checkpoint_root", runs / "distil", "--layer", "conv", *FIT, *data,
                      "--out", runs / "sigma_distil") == 0
    for label in ("label_f0", "label_f3"):
        assert run_script("find_knowledge", "--label-sigma", runs / label, "--distil-sigma", runs / "sigma_distil",
                          *data, "--split", "train", "--layer", "conv", "--bootstrap", 20, "--no-figures",
                          "--out", runs / f"metrics_{label}") == 0
    same = (runs / "metrics_label_f0" / "report.md").read_text()
    assert "tapped conv at different nodes" not in same
    assert "σ fitted at conv = features.0 (the sigma run's own tap); D is the weight distance its training run " \
           "recorded for conv (tap features.3)" in same
    other = (runs / "metrics_label_f3" / "report.md").read_text()
    assert f"--label-sigma {runs / 'label_f3'}: features.3; --distil-sigma {runs / 'sigma_distil'}: features.0" \
           in other


@pytest.mark.slow
def test_zero_initialised_batchnorm_before_the_tap_is_named(tiny_data, tmp_path, one_thread):
    runs, data = tmp_path / "runs", ("--data", tiny_data)
    model = ("--arch", ZERO_BN, "--taps", "conv=bn:conv.weight,fc3=fc3", "--image-size", 32)
    assert run_script("train_net", *model, *COMMON, *data, "--split", "teacher", "--epochs", 1, "--checkpoints", 0, 1,
                      "--out", runs / "teacher") == 0
    assert run_script("train_sigma", "--checkpoint_root", runs / "teacher", "--layer", "conv", *FIT, *data,
                      "--out", runs / "sigma") == 0
    notes = read_json(runs / "sigma" / "run.json")["notes"]
    assert len(notes) == 1 and notes[0].startswith("σ_f² = 0 for most images at epoch(s) 0 (4 of 4 fits)")
    # a teacher whose feature is constant (its epoch 0): the student's phase-1 loss stays flat, and it says so
    assert run_script("distillation", "--teacher_checkpoint", runs / "teacher" / "0.pth.tar", "--arch", ZERO_BN,
                      *COMMON, *data, "--split", "train", "--layer", "conv", "--epochs", 2, "--finetune-epochs", 0,
                      "--checkpoints", 0, 2, "--out", runs / "distil") == 0
    notes = read_json(runs / "distil" / "run.json")["notes"]
    assert any("stayed flat" in n and "zero-initialised BatchNorm" in n for n in notes), notes
