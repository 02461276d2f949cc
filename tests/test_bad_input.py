"""The bad-input catalogue (issue 10): every case, across the four stage scripts and the preparers, ends with
exit status 2 and one error line that names the problem's flag, no traceback, and no output written.

The inputs are real tiny runs (a label net, a distilled student, the sigma runs of both) and damaged
copies of their files: truncated checkpoints and npy files, NaN maps, a malicious pickle, an architecture
that does not fit, grids and layers that do not match.
"""
from __future__ import annotations

import os
import re
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from kdq.models import build_model
from tests.helpers import run_script

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) ")
TRAIN = ("--arch", "vgg_tiny", "--batch-size", 4, "--lr", 0.02, "--device", "cpu", "--val-split", "val")
SIGMA = ("--arch", "vgg_tiny", "--layer", "fc1", "--split", "train", "--pic-num", 4, "--effect-num", 4,
         "--samples", 2, "--steps", 3, "--break-steps", 1, "--grid", 4, "--effective-rule", "off", "--no-progress",
         "--device", "cpu")
PWNED = "kdq_pwned"


class Exploit:
    """Unpickling this runs a shell command: what a checkpoint from a stranger could hold."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """Good tiny runs of every stage plus damaged files made from them."""
    root = tmp_path_factory.mktemp("inputs")
    data = ("--data", tiny_data)
    label, distil = root / "label", root / "distil"
    assert run_script("train_net/train_net.py", *TRAIN, *data, "--split", "train", "--epochs", 2,
                      "--checkpoints", 0, 1, 2, "--out", label) == 0
    assert run_script("distillation/distillation.py", "--teacher_checkpoint", label / "2.pth.tar",
                      "--teacher-arch", "vgg_tiny", *TRAIN, *data, "--split", "train", "--layer", "fc1",
                      "--epochs", 2, "--finetune-epochs", 1, "--checkpoints", 0, 1, 2, "--out", distil) == 0
    for net in ("label", "distil"):
        assert run_script("sigma/train_sigma.py", "--checkpoint_root", root / net, *SIGMA, *data,
                          "--out", root / f"sigma_{net}") == 0
    bad = root / "bad"
    bad.mkdir()
    good = (label / "2.pth.tar").read_bytes()
    (bad / "truncated.pth.tar").write_bytes(good[: len(good) // 2])
    (bad / "text.pth").write_text("not a checkpoint")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit(root / PWNED)}, bad / "exploit.pth.tar")
    torch.save({"state_dict": build_model("resnet_tiny", 4).state_dict()}, bad / "resnet.pth.tar")
    shutil.copytree(label, bad / "label_truncated")  # a checkpoint run with one truncated epoch
    (bad / "label_truncated" / "1.pth.tar").write_bytes(good[:1000])
    (bad / "empty_run").mkdir()
    shutil.copytree(root / "sigma_label", bad / "sigma_truncated")
    first = sorted((bad / "sigma_truncated").glob("img_*_effect"))[0] / "npy_files" / "best_sigma_entropy.npy"
    first.write_bytes(first.read_bytes()[:60])
    # (a NaN σ* map is not an error: that image is skipped and counted, see test_find_knowledge)
    shutil.copytree(label, bad / "label_nan")  # weight distances that diverged
    wd = np.load(label / "weight_diff.npy")
    np.save(bad / "label_nan" / "weight_diff.npy", np.full_like(wd, np.nan))
    shutil.copytree(root / "sigma_distil", bad / "sigma_grid2")  # same run recorded with another grid
    for f in (bad / "sigma_grid2").glob("img_*/npy_files/best_sigma_entropy.npy"):
        np.save(f, np.load(f)[..., :2, :2])
    (bad / "a_file").write_text("x")
    (bad / "log.csv").write_text("epoch,loss\n1,0.5\n")  # a text file the unpickler chokes on (IndexError)
    return types.SimpleNamespace(root=root, data=tiny_data, label=label, distil=distil, bad=bad,
                                 sigma_label=root / "sigma_label", sigma_distil=root / "sigma_distil")


def train(r, out, **change):
    argv = {"--arch": "vgg_tiny", "--data": r.data, "--split": "train", "--val-split": "val", "--epochs": 1,
            "--batch-size": 4, "--device": "cpu", "--out": out, **change}
    return ("train_net/train_net.py", [x for kv in argv.items() for x in kv if x is not None])


def distil(r, out, *extra, **change):
    argv = {"--teacher_checkpoint": r.label / "2.pth.tar", "--teacher-arch": "vgg_tiny", "--arch": "vgg_tiny",
            "--data": r.data, "--split": "train", "--val-split": "val", "--layer": "fc1", "--epochs": 1,
            "--finetune-epochs": 0, "--batch-size": 4, "--device": "cpu", "--out": out, **change}
    return ("distillation/distillation.py", [x for kv in argv.items() for x in kv if x is not None] + list(extra))


def sigma(r, out, **change):
    flags = [a for a in SIGMA if a != "--no-progress"]
    argv = {"--checkpoint_root": r.label, "--data": r.data, **dict(zip(flags[::2], flags[1::2])), "--out": out,
            **change}
    return ("sigma/train_sigma.py", [x for kv in argv.items() for x in kv if x is not None] + ["--no-progress"])


def metrics(r, out, **change):
    argv = {"--label-sigma": r.sigma_label, "--distil-sigma": r.sigma_distil, "--label-run": r.label,
            "--distil-run": r.distil, "--data": r.data, "--split": "train", "--layer": "fc1", "--bootstrap": 20,
            "--no-figures": None, "--out": out, **change}
    return ("sigma/find_knowledge_new.py", [x for kv in argv.items() for x in kv if x is not None])


def prepare(r, out, kind, src):
    return ("function/prepare_data.py", [kind, "--src", src, "--out", out])


# id → (command builder (runs, out) → (script, argv), text the error line must contain)
CASES = {
    # train_net
    "train_unknown_arch": (lambda r, o: train(r, o, **{"--arch": "vgg17"}), "--arch"),
    "train_missing_data": (lambda r, o: train(r, o, **{"--data": r.root / "nope"}), "nope"),
    "train_data_is_a_file": (lambda r, o: train(r, o, **{"--data": r.bad / "a_file"}), "a_file"),
    "train_unknown_split": (lambda r, o: train(r, o, **{"--split": "nosplit"}), "nosplit"),
    "train_batch_zero": (lambda r, o: train(r, o, **{"--batch-size": 0}), "--batch-size"),
    "train_lr_not_a_number": (lambda r, o: train(r, o, **{"--lr": "fast"}), "--lr"),
    "train_lr_infinite": (lambda r, o: train(r, o, **{"--lr": "inf"}), "--lr"),
    "train_checkpoint_beyond_epochs": (lambda r, o: train(r, o, **{"--checkpoints": 7}), "--checkpoints"),
    "train_pretrained_not_a_checkpoint": (lambda r, o: train(r, o, **{"--pretrained": r.bad / "text.pth"}),
                                          "is not a torch checkpoint"),
    "train_pretrained_exploit": (lambda r, o: train(r, o, **{"--pretrained": r.bad / "exploit.pth.tar"}),
                                 "weights_only"),
    "train_pretrained_is_a_log": (lambda r, o: train(r, o, **{"--pretrained": r.bad / "log.csv"}), "--pretrained"),
    "train_out_is_a_file": (lambda r, o: train(r, r.bad / "a_file"), "--out"),
    "train_out_is_the_data": (lambda r, o: train(r, r.data, **{"--overwrite": None}), "is also --data"),
    "train_out_inside_the_data": (lambda r, o: train(r, r.data / "runs" / "x"), "lies inside --data"),
    # distillation
    "distil_missing_teacher": (lambda r, o: distil(r, o, **{"--teacher_checkpoint": r.root / "none.pth.tar"}),
                               "--teacher_checkpoint"),
    "distil_truncated_teacher": (lambda r, o: distil(r, o, **{"--teacher_checkpoint": r.bad / "truncated.pth.tar"}),
                                 "--teacher_checkpoint"),
    "distil_teacher_of_other_arch": (lambda r, o: distil(r, o, **{"--teacher_checkpoint": r.bad / "resnet.pth.tar"}),
                                     "--teacher-arch"),
    "distil_teacher_exploit": (lambda r, o: distil(r, o, **{"--teacher_checkpoint": r.bad / "exploit.pth.tar"}),
                               "weights_only"),
    "distil_teacher_recorded_otherwise": (lambda r, o: distil(r, o, **{"--teacher-arch": "vgg_tiny_bn"}),
                                          "--teacher-arch vgg_tiny_bn but the teacher's run"),
    "distil_unknown_layer": (lambda r, o: distil(r, o, **{"--layer": "fc9"}), "--layer"),
    "distil_hinton_at_conv": (lambda r, o: distil(r, o, **{"--method": "hinton", "--layer": "conv"}), "--layer"),
    "distil_teacher_is_a_folder": (lambda r, o: distil(r, o, **{"--teacher_checkpoint": r.label}),
                                   "--teacher_checkpoint"),
    # train_sigma
    "sigma_missing_root": (lambda r, o: sigma(r, o, **{"--checkpoint_root": r.root / "none"}), "--checkpoint_root"),
    "sigma_root_without_checkpoints": (lambda r, o: sigma(r, o, **{"--checkpoint_root": r.bad / "empty_run"}),
                                       "--checkpoint_root"),
    "sigma_truncated_checkpoint": (lambda r, o: sigma(r, o, **{"--checkpoint_root": r.bad / "label_truncated"}),
                                   "--checkpoint_root"),
    "sigma_arch_does_not_fit": (lambda r, o: sigma(r, o, **{"--arch": "resnet_tiny"}), "--arch"),
    "sigma_arch_recorded_otherwise": (lambda r, o: sigma(r, o, **{"--arch": "vgg_tiny_bn"}), "was made with vgg_tiny"),
    "sigma_grid_above_the_input_size": (lambda r, o: sigma(r, o, **{"--grid": 65}), "--grid"),
    "sigma_break_not_below_steps": (lambda r, o: sigma(r, o, **{"--break-steps": 3}), "--break-steps"),
    "sigma_target_entropy_nan": (lambda r, o: sigma(r, o, **{"--target-entropy": "nan"}), "--target-entropy"),
    "sigma_out_is_the_checkpoints": (lambda r, o: sigma(r, r.label, **{"--resume": None}), "is also --checkpoint_root"),
    "sigma_out_holds_the_checkpoints": (lambda r, o: sigma(r, r.root, **{"--overwrite": None}), "holds --checkpoint_root"),
    "sigma_pic_num_zero": (lambda r, o: sigma(r, o, **{"--pic-num": 0}), "--pic-num"),
    # find_knowledge_new
    "metrics_missing_sigma": (lambda r, o: metrics(r, o, **{"--label-sigma": r.root / "none"}), "--label-sigma"),
    "metrics_truncated_npy": (lambda r, o: metrics(r, o, **{"--label-sigma": r.bad / "sigma_truncated"}),
                              "--label-sigma"),
    "metrics_nan_weight_distance": (lambda r, o: metrics(r, o, **{"--label-run": r.bad / "label_nan"}),
                                    "--label-run"),
    "metrics_grids_differ": (lambda r, o: metrics(r, o, **{"--distil-sigma": r.bad / "sigma_grid2"}), "grid"),
    "metrics_wrong_layer": (lambda r, o: metrics(r, o, **{"--layer": "conv"}), "--label-sigma"),
    "metrics_level_out_of_range": (lambda r, o: metrics(r, o, **{"--level": 1.5}), "--level"),
    "metrics_run_is_not_the_fitted_one": (lambda r, o: metrics(r, o, **{"--label-run": r.distil}), "--label-run"),
    "metrics_out_is_an_input": (lambda r, o: metrics(r, r.sigma_distil, **{"--overwrite": None}),
                                "is also --distil-sigma"),
    "metrics_label_run_is_a_file": (lambda r, o: metrics(r, o, **{"--label-run": r.bad / "a_file"}), "--label-run"),
    # preparers
    "prepare_unknown_dataset": (lambda r, o: prepare(r, o, "coco", r.root), "coco"),
    "prepare_cub_missing_src": (lambda r, o: prepare(r, o, "cub", r.root / "none"), "--src"),
    "prepare_voc_src_is_a_file": (lambda r, o: prepare(r, o, "voc", r.bad / "a_file"), "--src"),
    "prepare_ilsvrc_src_without_layout": (lambda r, o: prepare(r, o, "ilsvrc", r.bad / "empty_run"), "--src"),
}


def run_case(script: str, argv: list) -> int:
    try:
        return run_script(script, *argv)
    except SystemExit as exc:  # argparse errors
        return exc.code


def test_the_catalogue_is_large_enough():
    scripts = {"train", "distil", "sigma", "metrics", "prepare"}
    assert len(CASES) >= 25
    assert {name.split("_")[0] for name in CASES} == scripts


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, runs, tmp_path, capsys):
    build, expected = CASES[case]
    out = tmp_path / "out"
    script, argv = build(runs, out)
    inputs_before = snapshot(runs.root)
    capsys.readouterr()
    assert run_case(script, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1, lines
    assert "error" in lines[0] and expected in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    assert snapshot(runs.root) == inputs_before, "an input was changed"
    assert not (runs.root / PWNED).exists(), "the malicious pickle ran"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_debug_shows_the_traceback(runs, tmp_path):
    script, argv = train(runs, tmp_path / "out", **{"--arch": "vgg17"})
    with pytest.raises(Exception):
        run_script(script, *argv, "--debug")
