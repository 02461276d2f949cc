"""train_net.py: docs/method.md §4 files, exact resume, and one-line errors for bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdq.function.io.checkpoint import list_checkpoints, load_checkpoint
from kdq.function.train.engine import EpochLoop
from kdq.function.train.schedules import paper_schedule, parse_epochs
from tests.helpers import one_error_line, run_script

SCRIPT = "train_net/train_net.py"


def train(data, out, *extra, epochs=2):
    return run_script(SCRIPT, "--arch", "vgg_tiny", "--data", data, "--split", "train", "--val-split", "val",
                      "--epochs", epochs, "--batch-size", 4, "--device", "cpu", "--out", out, *extra)



def test_run_writes_spec_layout(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert train(tiny_data, out, "--checkpoints", "0", "1", "2") == 0
    assert list(list_checkpoints(out)) == [0, 1, 2]
    ckpt = load_checkpoint(out / "2.pth.tar")
    assert {"epoch", "state_dict", "best_acc1"} <= set(ckpt) and "optimizer" not in ckpt  # opt-in
    with_opt = tmp_path / "with_opt"
    assert train(tiny_data, with_opt, "--checkpoints", "1", "--save-optimizer", epochs=1) == 0
    assert "optimizer" in load_checkpoint(with_opt / "1.pth.tar")
    assert ckpt["epoch"] == 2
    wd = np.load(out / "weight_diff.npy", allow_pickle=False)
    assert wd.shape == (4, 3) and np.all(wd[:, 0] == 0) and np.all(wd[:, 1:] > 0)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["settings"]["epochs"] == 2
    log = json.loads((out / "train_log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2] and "val_acc1" in log[0]
    assert (out / "train_log.csv").read_text().startswith("epoch,")
    # epoch 0 is the initialisation, so it differs from epoch 2
    w0 = load_checkpoint(out / "0.pth.tar")["state_dict"]
    assert not torch.equal(w0["net.classifier.0.weight"], ckpt["state_dict"]["net.classifier.0.weight"])


def test_learning_rate_schedules(tiny_data, tmp_path):
    # the original's np.logspace(log10(lr), log10(lr) − decades, E): by hand for lr 0.02, E = 3
    runs = {"log1": (("--lr", "0.02"), [0.02, 0.02 * 10 ** -0.5, 0.002]),
            "log2": (("--lr", "0.02", "--lr-down", "2"), [0.02, 0.002, 0.0002]),
            "const": (("--lr", "0.02", "--lr-schedule", "constant"), [0.02, 0.02, 0.02])}
    for name, (flags, expected) in runs.items():
        out = tmp_path / name
        assert train(tiny_data, out, *flags, "--checkpoints", "3", "--val-split", "none", epochs=3) == 0
        lrs = [row["lr"] for row in json.loads((out / "train_log.json").read_text())]
        assert lrs == pytest.approx(expected, rel=1e-12), name
    record = json.loads((tmp_path / "log1" / "run.json").read_text())
    assert record["settings"]["lr_schedule"] == "logspace" and record["settings"]["augment"] == "standard"


def test_training_transforms_are_the_originals():
    from PIL import Image

    from kdq.function.data.transforms import TRAIN_TRANSFORMS, resolve_augment
    from kdq.models import arch_info

    assert arch_info("vgg16").train_resize == 256 and arch_info("alexnet").train_resize == 256
    assert arch_info("vgg_tiny").train_resize == 73  # 64 · 256/224, rounded
    wide = Image.new("RGB", (400, 100))  # a 4:1 image is squashed to a square, not cut from its shorter side
    standard = TRAIN_TRANSFORMS["standard"](224, 256)
    assert standard.transforms[0](wide).size == (256, 256) and standard(wide).shape == (3, 224, 224)
    assert TRAIN_TRANSFORMS["none"](224, 256)(wide).shape == (3, 224, 224)
    jitter = TRAIN_TRANSFORMS["heavy"](227, 256).transforms[5]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == ((0, 2), (0, 2), (0, 2), (-0.5, 0.5))
    # --augment auto: CUB trains without augmentation, VOC and ILSVRC with crop + flip, as the original
    assert [resolve_augment("auto", k) for k in ("cub", "voc", "ilsvrc", "embedded", None)] == \
        ["none", "standard", "standard", "standard", "standard"]
    assert resolve_augment("heavy", "cub") == "heavy"


def interrupted_at_epoch_2(monkeypatch, data, out, *extra, epochs) -> int:
    """``train`` with a Ctrl-C at the start of epoch 2; returns its exit status."""
    original = EpochLoop._one_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(EpochLoop, "_one_epoch", interrupted)
        return train(data, out, *extra, epochs=epochs)


def test_resume_after_interruption_is_exact(tiny_data, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert train(tiny_data, full, "--checkpoints", "0", "1", "2", "3", epochs=3) == 0
    part = tmp_path / "part"
    assert interrupted_at_epoch_2(monkeypatch, tiny_data, part, "--checkpoints", "0", "1", "2", "3", epochs=3) == 130
    assert list(list_checkpoints(part)) == [0, 1]
    assert json.loads((part / "run.json").read_text())["status"] == "interrupted"  # not "running"
    assert train(tiny_data, part, "--checkpoints", "0", "1", "2", "3", "--resume", epochs=3) == 0
    for e in (0, 1, 2, 3):
        a = load_checkpoint(full / f"{e}.pth.tar")["state_dict"]
        b = load_checkpoint(part / f"{e}.pth.tar")["state_dict"]
        for k in a:
            assert torch.equal(a[k], b[k]), (e, k)
    assert np.array_equal(np.load(full / "weight_diff.npy"), np.load(part / "weight_diff.npy"))


def test_finished_run_is_not_overwritten(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(tiny_data, out, "--checkpoints", "1", epochs=1) == 0
    before = (out / "1.pth.tar").read_bytes()
    capsys.readouterr()
    assert train(tiny_data, out, epochs=1) == 2
    assert "--resume" in one_error_line(capsys)
    assert (out / "1.pth.tar").read_bytes() == before
    assert train(tiny_data, out, "--checkpoints", "1", "--resume", epochs=1) == 0  # complete: nothing to do
    capsys.readouterr()
    assert train(tiny_data, out, "--resume", epochs=1) == 2  # other --checkpoints: refused, not "nothing to do"
    assert "--checkpoints" in one_error_line(capsys)
    assert train(tiny_data, out, "--overwrite", "--checkpoints", "0", epochs=1) == 0
    assert list(list_checkpoints(out)) == [0]


def test_resume_refuses_other_settings(tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert interrupted_at_epoch_2(monkeypatch, tiny_data, out, "--checkpoints", "0", "2", epochs=2) == 130
    state = (out / "train_state.pth.tar").read_bytes()
    for flag, value in (("--lr", "0.05"), ("--seed", "1"), ("--augment", "none"), ("--epochs", "1")):
        capsys.readouterr()
        extra = (flag, value) if flag != "--epochs" else ("--checkpoints", "0")
        assert train(tiny_data, out, *(() if flag == "--epochs" else ("--checkpoints", "0", "2")), *extra,
                     "--resume", epochs=1 if flag == "--epochs" else 2) == 2, flag
        line = one_error_line(capsys)
        assert flag in line and "other settings" in line, line
    assert (out / "train_state.pth.tar").read_bytes() == state
    # runtime flags may change: another --workers (or --device) continues the run
    assert train(tiny_data, out, "--checkpoints", "0", "2", "--workers", "1", "--resume", epochs=2) == 0
    assert list(list_checkpoints(out)) == [0, 2]


def test_resume_with_more_epochs_extends_a_finished_run(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(tiny_data, out, "--checkpoints", "0", "2", epochs=2) == 0
    first = {name: (out / name).read_bytes() for name in ("0.pth.tar", "2.pth.tar")}
    wd2 = np.load(out / "weight_diff.npy")
    assert train(tiny_data, out, "--checkpoints", "0", "2", "3", "--resume", epochs=3) == 2  # other --checkpoints
    capsys.readouterr()
    assert train(tiny_data, out, "--checkpoints", "0", "2", "--resume", epochs=3) == 0
    assert "extended from 2 to 3 epochs" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in first} == first  # finished epochs are kept
    wd3 = np.load(out / "weight_diff.npy")
    assert wd3.shape == (4, 4) and np.array_equal(wd3[:, :3], wd2) and (wd3[:, 3] > 0).all()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["settings"]["epochs"] == 3
    assert len(record["extensions"]) == 1 and "extended from 2 to 3 epochs" in record["extensions"][0]
    assert [row["epoch"] for row in json.loads((out / "train_log.json").read_text())] == [1, 2, 3]


@pytest.mark.parametrize("case", ["arch", "root", "split", "device", "checkpoints", "pretrained", "batch"])
def test_bad_input_is_one_line_exit_2(case, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = {"arch": ("--arch", "vgg17"), "root": ("--data", tmp_path / "nope"), "split": ("--split", "nosplit"),
            "device": ("--device", "cuda"), "checkpoints": ("--checkpoints", "7"),
            "pretrained": ("--pretrained", tmp_path / "garbage.pth"), "batch": ("--batch-size", "0")}[case]
    if case == "device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    (tmp_path / "garbage.pth").write_text("not a checkpoint")
    base = {"--arch": "vgg_tiny", "--data": tiny_data, "--split": "train", "--epochs": 1, "--device": "cpu",
            "--out": out, "--val-split": "val"}
    base[args[0]] = args[1]
    argv = [str(x) for kv in base.items() for x in kv]
    code = run_script(SCRIPT, *argv) if case != "batch" else None
    if case == "batch":
        with pytest.raises(SystemExit) as exc:
            run_script(SCRIPT, *argv)
        code = exc.value.code
    assert code == 2
    line = one_error_line(capsys)
    assert "error" in line
    assert not out.exists() or not any(out.glob("*.pth.tar"))


def test_paper_schedule_scales():
    assert paper_schedule(150) == [0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 70, 90, 110, 130, 150]
    assert paper_schedule(400)[-7:] == [170, 190, 240, 280, 320, 360, 400]
    assert paper_schedule(15) == [0, 1, 2, 3, 4, 5, 7, 9, 11, 13, 15]
    assert parse_epochs(["3", "1"], 5) == [1, 3]
    with pytest.raises(ValueError):
        parse_epochs(["9"], 5)


def test_divergence_stops_with_one_line_and_keeps_the_last_good_epoch(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(tiny_data, out, "--lr", "1e30", "--checkpoints", "0", "1", epochs=2) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert "error" in last and "diverged" in last
    assert not (out / "1.pth.tar").exists() and (out / "0.pth.tar").exists()
