"""distillation.py: the two phases touch exactly the right parameters, the teacher never changes, docs/method.md §4
files, Hinton KD by hand, exact resume, and one-line errors for bad input."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdq.function.io.checkpoint import list_checkpoints, load_checkpoint
from kdq.function.train.distill import freeze_teacher, hinton_loss, make_adapter
from kdq.function.train.engine import EpochLoop
from kdq.function.runtime import seed_everything
from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.transforms import eval_transform
from kdq.models import TAPS, build_model, feature_fn, params_up_to
from tests.helpers import one_error_line, run_script

SCRIPT = "distillation/distillation.py"
TEACHER_ARCH = "vgg_tiny_bn"  # BatchNorm: "the teacher is never updated" covers its running statistics


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    """A train_net checkpoint (one epoch on the teacher split)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert run_script("train_net/train_net.py", "--arch", TEACHER_ARCH, "--data", tiny_data, "--split", "teacher",
                      "--val-split", "none", "--epochs", 1, "--batch-size", 8, "--checkpoints", 1,
                      "--device", "cpu", "--out", out) == 0
    return out / "1.pth.tar"


def distil(data, teacher, out, *extra, arch="vgg_tiny_bn", layer="conv", epochs=2, finetune=2):
    argv = ["--teacher_checkpoint", teacher, "--teacher-arch", TEACHER_ARCH, "--arch", arch, "--data", data,
            "--split", "train", "--val-split", "val", "--epochs", epochs, "--finetune-epochs", finetune,
            "--batch-size", 4, "--device", "cpu", "--out", out]
    if layer is not None:
        argv += ["--layer", layer]
    return run_script(SCRIPT, *argv, *extra)


def weights(path):
    return load_checkpoint(path)["state_dict"]



@pytest.fixture(scope="module")
def conv_run(tiny_data, teacher, tmp_path_factory):
    """Feature KD at conv (3 epochs) + 2 fine-tuning epochs; keeps the teacher object the run used."""
    out = tmp_path_factory.mktemp("distil") / "conv"
    from kdq.function.train import distill as module

    used = []

    def spy(*a, **kw):
        model, meta = original(*a, **kw)
        used.append(model)
        return model, meta

    original = module.load_teacher
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "load_teacher", spy)
        assert distil(tiny_data, teacher, out, "--checkpoints", 0, 1, 2, 3, epochs=3) == 0
    return out, used[0]


def test_layout_and_weight_distance(conv_run):
    out, _ = conv_run
    assert list(list_checkpoints(out)) == [0, 1, 2, 3]
    for e in (0, 3):
        ckpt = load_checkpoint(out / f"{e}.pth.tar")
        assert {"epoch", "state_dict", "best_acc1"} <= set(ckpt) and ckpt["epoch"] == e
        assert "optimizer" not in ckpt  # opt-in (--save-optimizer); --resume reads distill_state.pth.tar
    wd = np.load(out / "weight_diff.npy", allow_pickle=False)
    assert wd.shape == (4, 4) and np.all(wd[:, 0] == 0)
    assert np.all(wd[0, 1:] > 0)  # conv learns
    assert np.all(wd[1:] == 0)  # fc1..fc3 lie above --layer conv
    log = json.loads((out / "distill_log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2, 3] and "loss" in log[0] and "val_mse" in log[0]
    ft = json.loads((out / "finetune_log.json").read_text())
    assert [r["epoch"] for r in ft] == [1, 2] and "val_acc1" in ft[0] and ft[0]["lr"] == pytest.approx(1e-3)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["layer"] == "conv"
    # the original's defaults: the teacher in eval mode, a constant learning rate in phase 1
    assert record["teacher"]["mode"] == "eval" and record["settings"]["teacher_mode"] == "eval"
    assert record["settings"]["lr_schedule"] == "constant"
    assert [r["lr"] for r in log] == pytest.approx([0.01] * 3)
    assert record["settings"]["frozen_mode"] == "train"
    final = load_checkpoint(out / "final.pth.tar")
    assert final["phase"] == "finetune" and record["final_val_acc1"] == pytest.approx(final["val_acc1"])


def test_student_starts_like_a_label_net(conv_run):
    """Same --arch and --seed as train_net → the same initialisation (checkpoint 0)."""
    out, _ = conv_run
    seed_everything(0)
    label = build_model("vgg_tiny_bn", 4).state_dict()
    got = weights(out / "0.pth.tar")
    assert all(torch.equal(label[k], got[k]) for k in label)


def test_phase1_only_moves_layers_up_to_layer(conv_run):
    out, _ = conv_run
    model = build_model("vgg_tiny_bn", 4)
    below = set(params_up_to(model, TAPS["vgg_tiny_bn"]["conv"]))
    above = [n for n, _ in model.named_parameters() if n not in below]
    assert above and below
    w0, w3 = weights(out / "0.pth.tar"), weights(out / "3.pth.tar")
    assert all(torch.equal(w0[n], w3[n]) for n in above)
    assert not torch.equal(w0["net.features.0.weight"], w3["net.features.0.weight"])


def test_phase2_only_moves_layers_above_layer(conv_run, tiny_data, teacher, tmp_path):
    out, _ = conv_run
    model = build_model("vgg_tiny_bn", 4)
    below = set(params_up_to(model, TAPS["vgg_tiny_bn"]["conv"]))
    w3, wf = weights(out / "3.pth.tar"), weights(out / "final.pth.tar")
    frozen = [k for k in w3 if k.rsplit(".", 1)[0] + ".weight" in below]  # params + BN buffers up to conv
    buffers = [k for k in frozen if k not in below and "num_batches" not in k]
    assert buffers and all(torch.equal(w3[k], wf[k]) for k in below)  # frozen weights stay
    # the original's phase 2 runs model.train(): BatchNorm of the frozen layers uses and updates its statistics
    assert not all(torch.equal(w3[k], wf[k]) for k in buffers)
    assert not torch.equal(w3["net.classifier.0.weight"], wf["net.classifier.0.weight"])
    assert load_checkpoint(out / "3.pth.tar")["phase"] == "distill"  # phase 2 left phase-1 files alone
    # --frozen-mode eval: the frozen layers compute exactly what phase 1 left, their statistics included
    still = tmp_path / "still"
    assert distil(tiny_data, teacher, still, "--frozen-mode", "eval", "--checkpoints", 1, epochs=1, finetune=1) == 0
    w1, wf = weights(still / "1.pth.tar"), weights(still / "final.pth.tar")
    assert all(torch.equal(w1[k], wf[k]) for k in frozen)


def test_phase1_lowers_feature_mse(conv_run, tiny_data):
    out, teacher = conv_run  # the run's teacher (eval mode, as the original)
    images = torch.stack([x for x, _ in MaskedImageFolder(tiny_data, "train", transform=eval_transform(64))])
    with torch.no_grad():
        target = feature_fn(teacher, TEACHER_ARCH, "conv")(images)

        def mse(epoch):
            student = build_model("vgg_tiny_bn", 4)
            student.load_state_dict(weights(out / f"{epoch}.pth.tar"))
            return F.mse_loss(feature_fn(student, "vgg_tiny_bn", "conv")(images), target).item()

        assert mse(3) < 0.9 * mse(0)


def test_teacher_is_never_updated(conv_run, teacher):
    _, used = conv_run
    saved = weights(teacher)
    now = used.state_dict()
    assert set(saved) == set(now)
    assert all(torch.equal(saved[k], now[k].cpu()) for k in saved)
    assert not any(p.requires_grad for p in used.parameters())


def test_freeze_teacher_train_mode_keeps_bn_buffers():
    seed_everything(0)
    model = build_model("vgg_tiny_bn", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_teacher(model, "train")
    with torch.no_grad():
        a = model(torch.randn(4, 3, 64, 64))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        b = model(torch.randn(4, 3, 64, 64))  # eval mode still uses the running statistics
    assert a.shape == b.shape


def test_fc3_has_no_phase2(tiny_data, teacher, tmp_path):
    out = tmp_path / "fc3"
    assert distil(tiny_data, teacher, out, "--checkpoints", 0, 1, layer="fc3", arch="vgg_tiny", epochs=1,
                  finetune=3) == 0
    assert not (out / "finetune_log.json").exists() and not (out / "finetune_state.pth.tar").exists()
    w1, wf = weights(out / "1.pth.tar"), weights(out / "final.pth.tar")
    assert all(torch.equal(w1[k], wf[k]) for k in w1)
    record = json.loads((out / "run.json").read_text())
    assert "skipped" in record["finetune"] and record["final_val_acc1"] is not None
    wd = np.load(out / "weight_diff.npy")
    assert wd.shape == (4, 2) and np.all(wd[:, 1] > 0)  # fc3 = every layer learns


def test_hinton_loss_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 2])
    T, alpha = 2.0, 0.7
    s64, t64 = s.double().numpy(), t.double().numpy()

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, q = softmax(t64 / T), softmax(s64 / T)
    kl = np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    ce = np.mean(-np.log(softmax(s64)[np.arange(2), y.numpy()]))
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert hinton_loss(s, t, y, T, alpha).item() == pytest.approx(expected, rel=1e-6)
    assert hinton_loss(s, s, y, T, 1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert hinton_loss(s, t, y, T, 0.0).item() == pytest.approx(ce, rel=1e-6)


def test_hinton_run_trains_every_layer(tiny_data, teacher, tmp_path):
    out = tmp_path / "hinton"
    assert distil(tiny_data, teacher, out, "--method", "hinton", "--checkpoints", 0, 1, layer=None,
                  arch="vgg_tiny", epochs=1) == 0
    wd = np.load(out / "weight_diff.npy")
    assert wd.shape == (4, 2) and np.all(wd[:, 1] > 0)
    log = json.loads((out / "distill_log.json").read_text())
    assert "val_acc1" in log[0] and "acc1" in log[0]
    assert not (out / "finetune_log.json").exists()
    assert json.loads((out / "run.json").read_text())["teacher"]["mode"] == "eval"


def test_resume_after_interruption_is_exact(tiny_data, teacher, tmp_path, monkeypatch):
    extra = ("--checkpoints", 0, 1, 2)
    full = tmp_path / "full"
    assert distil(tiny_data, teacher, full, *extra, layer="fc1") == 0
    part = tmp_path / "part"
    original = EpochLoop._one_epoch

    def interrupted_at(name):
        def one_epoch(self, epoch):
            if self.name == name and epoch == 2:
                raise KeyboardInterrupt
            return original(self, epoch)
        return one_epoch

    monkeypatch.setattr(EpochLoop, "_one_epoch", interrupted_at("distill"))
    assert distil(tiny_data, teacher, part, *extra, layer="fc1") == 130
    assert list(list_checkpoints(part)) == [0, 1]
    monkeypatch.setattr(EpochLoop, "_one_epoch", interrupted_at("finetune"))
    assert distil(tiny_data, teacher, part, *extra, "--resume", layer="fc1") == 130
    assert not (part / "final.pth.tar").exists()
    monkeypatch.setattr(EpochLoop, "_one_epoch", original)
    assert distil(tiny_data, teacher, part, *extra, "--resume", layer="fc1") == 0
    for name in ("0.pth.tar", "1.pth.tar", "2.pth.tar", "final.pth.tar"):
        a, b = weights(full / name), weights(part / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert np.array_equal(np.load(full / "weight_diff.npy"), np.load(part / "weight_diff.npy"))
    for log in ("distill_log.json", "finetune_log.json"):
        a, b = (json.loads((d / log).read_text()) for d in (full, part))
        assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_adapter_for_other_widths(tiny_data, teacher, tmp_path, capsys):
    """fc1 widths differ (teacher 256, resnet_tiny 128): an error naming both, unless --adapter.
    (Other archs with equal shapes run in the fc3 and hinton tests: vgg_tiny students of a vgg_tiny_bn teacher.)"""
    out = tmp_path / "resnet_fc1"
    capsys.readouterr()
    assert distil(tiny_data, teacher, out, arch="resnet_tiny", layer="fc1", epochs=1, finetune=0) == 2
    line = one_error_line(capsys)
    assert "(256,)" in line and "(128,)" in line and "--adapter" in line and not out.exists()
    assert distil(tiny_data, teacher, out, "--adapter", "--checkpoints", 0, 1, arch="resnet_tiny", layer="fc1",
                  epochs=1, finetune=1) == 0
    ckpt = load_checkpoint(out / "1.pth.tar")
    assert ckpt["adapter"]["weight"].shape == (256, 128)
    assert not torch.equal(ckpt["adapter"]["weight"], load_checkpoint(out / "0.pth.tar")["adapter"]["weight"])
    assert json.loads((out / "finetune_log.json").read_text())[0]["lr"] == pytest.approx(1e-2)  # resnet family


def test_make_adapter_shapes():
    assert make_adapter((32, 8, 8), (64, 8, 8))(torch.zeros(2, 32, 8, 8)).shape == (2, 64, 8, 8)
    assert make_adapter((10,), (20,))(torch.zeros(2, 10)).shape == (2, 20)
    with pytest.raises(ValueError, match="spatial"):
        make_adapter((32, 8, 8), (64, 4, 4))
    with pytest.raises(ValueError):
        make_adapter((32, 8, 8), (64,))


def test_torchvision_format_teacher(tiny_data, teacher, tmp_path, capsys):
    tv = tmp_path / "tv.pth"
    torch.save({k.removeprefix("net."): v for k, v in weights(teacher).items()}, tv)
    out = tmp_path / "run"
    assert distil(tiny_data, tv, out, "--teacher-format", "torchvision", "--checkpoints", 1, epochs=1,
                  finetune=0) == 0
    assert json.loads((out / "run.json").read_text())["teacher"]["num_classes"] == 4
    capsys.readouterr()
    assert distil(tiny_data, tv, tmp_path / "run2", epochs=1, finetune=0) == 2
    assert "--teacher-format torchvision" in one_error_line(capsys)


@pytest.mark.parametrize("case", ["missing", "garbage", "unsafe", "wrong_arch", "unknown_layer", "no_layer",
                                  "teacher_arch", "hinton_layer", "hinton_adapter", "class_order", "finished"])
def test_bad_input_is_one_line_exit_2(case, tiny_data, teacher, conv_run, tmp_path, capsys):
    out = tmp_path / "run"
    ckpt, extra, layer = teacher, [], "conv"
    if case == "missing":
        ckpt = tmp_path / "nope.pth.tar"
    elif case == "garbage":
        ckpt = tmp_path / "garbage.pth.tar"
        ckpt.write_text("not a checkpoint")
    elif case == "unsafe":
        ckpt = tmp_path / "unsafe.pth.tar"
        torch.save({"state_dict": weights(teacher), "args": argparse.Namespace(lr=1)}, ckpt)
    elif case == "wrong_arch":
        extra = ["--teacher-arch", "resnet_tiny"]
    elif case == "unknown_layer":
        layer = "fc9"
    elif case == "no_layer":
        layer = None
    elif case == "teacher_arch":
        extra = ["--teacher-arch", "vgg17"]
    elif case == "hinton_layer":
        extra = ["--method", "hinton"]
    elif case == "hinton_adapter":
        extra, layer = ["--method", "hinton", "--adapter"], None
    elif case == "class_order":  # logits of a teacher whose classes are in another order
        ckpt = tmp_path / "shuffled.pth.tar"
        state = load_checkpoint(teacher)
        torch.save({**state, "classes": state["classes"][::-1]}, ckpt)
        layer = "fc3"
    elif case == "finished":
        out = conv_run[0]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()} if out.exists() else None
    capsys.readouterr()
    try:
        code = distil(tiny_data, ckpt, out, *extra, layer=layer, epochs=1, finetune=0)
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == 2
    line = one_error_line(capsys)
    assert "error" in line
    expect = {"missing": "does not exist", "garbage": "--teacher_checkpoint", "unsafe": "weights_only",
              "wrong_arch": "--teacher-arch resnet_tiny", "unknown_layer": "fc9", "no_layer": "--layer",
              "teacher_arch": "vgg17", "hinton_layer": "hinton", "hinton_adapter": "--adapter",
              "class_order": "same order", "finished": "--resume"}[case]
    assert expect in line
    if case == "wrong_arch":  # the teacher's run records its arch (keys that do not fit: test_bad_input)
        assert "was made with vgg_tiny_bn" in line
    if before is None:
        assert not out.exists()
    else:
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
