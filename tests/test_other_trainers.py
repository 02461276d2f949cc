"""Checkpoints from other trainers (issue 23, part 5): ``kdq-weight-distance`` turns a folder of torchdistill-style
or Lightning-style checkpoints into a run that train_sigma and find_knowledge read, with the weight distance
between consecutive snapshots (a lower bound of the path length, docs/method.md §1)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdq.function.archs import resolve_arch
from tests.helpers import one_error_line, run_script

SCALES = {0: 1.0, 1: 1.5, 2: 0.5}  # every weight of snapshot e is w0 · SCALES[e]
# ‖w1 − w0‖ / ‖w0‖ = 0.5 and ‖w2 − w1‖ / ‖w0‖ = 1.0 for every weight, by hand
EXPECTED_ROW = [0.0, 0.5, 1.0]
CLASSES = 4  # tiny_data's


def snapshots() -> dict[int, dict[str, torch.Tensor]]:
    """Three vgg_tiny state dicts, each the first scaled by SCALES (floating tensors only; buffers kept)."""
    torch.manual_seed(0)
    sd = resolve_arch("vgg_tiny").build(CLASSES).state_dict()
    return {e: {k: v * s if v.is_floating_point() else v.clone() for k, v in sd.items()} for e, s in SCALES.items()}


def torchdistill_folder(folder):
    """torchdistill's layout: ``{"model": state dict, "epoch": e, "optimizer": ...}`` per file (and a log beside)."""
    folder.mkdir()
    for e, sd in snapshots().items():
        torch.save({"model": sd, "epoch": e, "optimizer": {"lr": 0.1}}, folder / f"ckpt_{e}.pt")
    (folder / "log.txt").write_text("not a checkpoint\n")
    return folder


def lightning_folder(folder):
    """Lightning's layout: ``{"state_dict": {"model.<key>": ...}, "epoch": e, "global_step": ...}``, its epoch
    counting finished epochs from 0 (so --epoch-offset 1), in ``epoch=<e>-step=<s>.ckpt`` files."""
    folder.mkdir()
    for e, sd in snapshots().items():
        torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": e, "global_step": 10 * e},
                   folder / f"epoch={e}-step={10 * e}.ckpt")
    return folder


def test_torchdistill_folder_gives_the_snapshot_distances(tmp_path):
    out = tmp_path / "run"
    assert run_script("weight_distance", "--checkpoints", torchdistill_folder(tmp_path / "td"), "--arch", "vgg_tiny",
                      "--out", out) == 0
    wd = np.load(out / "weight_diff.npy")
    assert wd.shape == (4, 3)
    for row in range(4):  # vgg_tiny taps every layer
        np.testing.assert_allclose(wd[row], EXPECTED_ROW, rtol=1e-6)
    record = json.loads((out / "run.json").read_text())
    assert record["weight_distance"] == "snapshots" and record["checkpoints"] == [0, 1, 2]
    assert record["model"]["arch"] == "vgg_tiny" and record["num_classes"] == CLASSES and record["status"] == "complete"
    saved = torch.load(out / "1.pth.tar", weights_only=True)
    torch.testing.assert_close(saved["state_dict"]["net.features.0.weight"], snapshots()[1]["net.features.0.weight"])


def test_lightning_folder_strips_the_prefix_and_offsets_the_epochs(tmp_path):
    out = tmp_path / "run"
    assert run_script("weight_distance", "--checkpoints", lightning_folder(tmp_path / "pl"), "--arch", "vgg_tiny",
                      "--epoch-offset", 1, "--out", out) == 0
    wd = np.load(out / "weight_diff.npy")
    assert wd.shape == (4, 4)  # epochs 1 2 3; the first snapshot (epoch 1) is the reference
    np.testing.assert_allclose(wd[0], [0.0] + EXPECTED_ROW, rtol=1e-6)
    assert json.loads((out / "run.json").read_text())["reference_epoch"] == 1
    assert sorted(p.name for p in out.glob("*.pth.tar")) == ["1.pth.tar", "2.pth.tar", "3.pth.tar"]


def test_explicit_key_and_prefix(tmp_path):
    out = tmp_path / "run"
    assert run_script("weight_distance", "--checkpoints", lightning_folder(tmp_path / "pl"), "--arch", "vgg_tiny",
                      "--key", "state_dict", "--prefix", "model.", "--out", out) == 0
    np.testing.assert_allclose(np.load(out / "weight_diff.npy")[3], EXPECTED_ROW, rtol=1e-6)


@pytest.mark.parametrize("argv, expected", [
    (("--key", "model"), "--key model: "),
    (("--prefix", "net."), "does not fit --arch vgg_tiny"),
    (("--arch", "vgg_tiny_bn"), "does not fit --arch vgg_tiny_bn"),
])
def test_bad_folder_or_flags_are_one_line(tmp_path, capsys, argv, expected):
    flags = {"--arch": "vgg_tiny", **dict(zip(argv[::2], argv[1::2]))}
    assert run_script("weight_distance", "--checkpoints", lightning_folder(tmp_path / "pl"), "--out", tmp_path / "o",
                      *[x for kv in flags.items() for x in kv]) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_two_files_of_one_epoch_are_refused(tmp_path, capsys):
    folder = torchdistill_folder(tmp_path / "td")
    torch.save({"model": snapshots()[2], "epoch": 2}, folder / "best.pt")
    assert run_script("weight_distance", "--checkpoints", folder, "--arch", "vgg_tiny", "--out", tmp_path / "o") == 2
    line = one_error_line(capsys)
    assert "are both epoch 2" in line and "best.pt" in line


FIT = ("--split", "train", "--pic-num", 4, "--effect-num", 4, "--samples", 4, "--steps", 4, "--break-steps", 1,
       "--grid", 4, "--effective-rule", "off", "--batch-images", 2, "--no-progress", "--device", "cpu")


@pytest.mark.slow
def test_other_trainers_runs_go_through_train_sigma_and_find_knowledge(tiny_data, tmp_path, one_thread):
    runs = tmp_path / "runs"
    assert run_script("weight_distance", "--checkpoints", torchdistill_folder(tmp_path / "td"), "--arch", "vgg_tiny",
                      "--out", runs / "label") == 0
    assert run_script("weight_distance", "--checkpoints", lightning_folder(tmp_path / "pl"), "--arch", "vgg_tiny",
                      "--epoch-offset", 1, "--out", runs / "distil") == 0
    for net, epochs in (("label", [0, 1, 2]), ("distil", [1, 2, 3])):
        assert run_script("sigma/train_sigma.py", "--checkpoint_root", runs / net, "--layer", "conv", *FIT,
                          "--data", tiny_data, "--out", runs / f"sigma_{net}") == 0
        assert json.loads((runs / f"sigma_{net}" / "run.json").read_text())["checkpoints"] == epochs
    assert run_script("sigma/find_knowledge_new.py", "--label-sigma", runs / "sigma_label", "--distil-sigma",
                      runs / "sigma_distil", "--data", tiny_data, "--split", "train", "--layer", "conv",
                      "--bootstrap", 20, "--no-figures", "--out", runs / "metrics") == 0
    report = (runs / "metrics" / "report.md").read_text()
    assert "from saved checkpoints (kdq-weight-distance)" in report and "lower bound" in report


def test_overwrite_keeps_what_the_run_did_not_write(tmp_path, capsys):
    """--overwrite replaces a weight_distance run only when the folder holds nothing else (as for every stage)."""
    out = tmp_path / "run"
    argv = ["--checkpoints", torchdistill_folder(tmp_path / "td"), "--arch", "vgg_tiny", "--out", out]
    assert run_script("weight_distance", *argv) == 0
    (out / "notes.txt").write_text("mine")
    assert run_script("weight_distance", *argv, "--overwrite") == 2
    assert "notes.txt" in one_error_line(capsys) and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert run_script("weight_distance", *argv, "--overwrite") == 0 and (out / "weight_diff.npy").is_file()
