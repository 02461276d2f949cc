"""Bad input, round 3 (issue 25): flags checked for what they imply before anything is touched, odd environments,
the preparers' checked reading, a second Ctrl-C, complete runs that lost a checkpoint, and silently wrong results
(a val class the training split lacks, JSON that is not strict).

Every refusal: exit status 2, one error line holding the case's message, no traceback, nothing written (a fresh
--out stays absent or empty; an existing run, with --overwrite or --resume, stays byte-identical).  The inputs are
one module-scoped set of tiny runs; most cases fail before training starts.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import run_script

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) ")
TRAIN = ("--arch", "vgg_tiny", "--batch-size", 4, "--lr", 0.02, "--device", "cpu", "--val-split", "val",
         "--no-progress")
SIGMA = ("--arch", "vgg_tiny", "--layer", "fc1", "--split", "train", "--pic-num", 4, "--effect-num", 4,
         "--samples", 2, "--steps", 3, "--break-steps", 1, "--grid", 4, "--effective-rule", "off", "--no-progress",
         "--device", "cpu")


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """A label net, a distilled student and the sigma runs of both (2 epochs, checkpoints 0 1 2)."""
    root = tmp_path_factory.mktemp("r3")
    data = ("--data", tiny_data, "--split", "train")
    label, distil = root / "label", root / "distil"
    assert run_script("train_net/train_net.py", *TRAIN, *data, "--epochs", 2, "--checkpoints", 0, 1, 2,
                      "--out", label) == 0
    assert run_script("distillation/distillation.py", "--teacher_checkpoint", label / "2.pth.tar",
                      "--teacher-arch", "vgg_tiny", *TRAIN, *data, "--layer", "fc1", "--epochs", 2,
                      "--finetune-epochs", 1, "--checkpoints", 0, 1, 2, "--out", distil) == 0
    for net in ("label", "distil"):
        assert run_script("sigma/train_sigma.py", "--checkpoint_root", root / net, *SIGMA, "--data", tiny_data,
                          "--out", root / f"sigma_{net}") == 0
    return types.SimpleNamespace(root=root, data=tiny_data, label=label, distil=distil,
                                 sigma_label=root / "sigma_label", sigma_distil=root / "sigma_distil")


def train(r, out, *extra, epochs=1):
    return "train_net/train_net.py", [*TRAIN, "--data", r.data, "--split", "train", "--epochs", epochs,
                                      "--out", out, *extra]


def distil(r, out, *extra, epochs=1):
    return "distillation/distillation.py", ["--teacher_checkpoint", r.label / "2.pth.tar", "--teacher-arch",
                                            "vgg_tiny", *TRAIN, "--data", r.data, "--split", "train", "--layer",
                                            "fc1", "--epochs", epochs, "--finetune-epochs", 0, "--out", out, *extra]


def sigma(r, out, *extra, root=None):
    return "sigma/train_sigma.py", ["--checkpoint_root", root or r.label, *SIGMA, "--data", r.data, "--out", out,
                                    *extra]


def metrics(r, out, *extra, label_sigma=None, distil_sigma=None):
    return "sigma/find_knowledge_new.py", ["--label-sigma", label_sigma or r.sigma_label, "--distil-sigma",
                                           distil_sigma or r.sigma_distil, "--label-run", r.label, "--distil-run",
                                           r.distil,
                                           "--data", r.data, "--split", "train", "--layer", "fc1", "--bootstrap", 20,
                                           "--no-figures", "--out", out, *extra]


def run_case(script: str, argv: list) -> int:
    try:
        return run_script(script, *argv)
    except SystemExit as exc:  # argparse errors
        return exc.code


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes ({} when it does not exist)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def refused(capsys, script: str, argv: list) -> str:
    """Run a case that must be refused: exit 2, one error line (log lines aside), no traceback; the line."""
    capsys.readouterr()
    assert run_case(script, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1 and "error" in lines[0], lines
    return lines[0]


def copy_run(src: Path, out: Path) -> Path:
    shutil.copytree(src, out)
    return out


# ---- class 1: every flag checked for what it implies, before anything is touched ------------------------------------
HUGE = 10 ** 12
FRESH = {  # id → (command (runs, out) → (script, argv), text the error line holds)
    "train_image_size_too_small": (lambda r, o: train(r, o, "--image-size", 8),
                                   "--image-size 8: vgg_tiny cannot take 8x8 inputs (a forward of one image fails: "
                                   "RuntimeError: Given input size: (64x1x1). Calculated output size: (64x0x0). "
                                   "Output size is too small"),
    "train_epochs_beyond_memory": (lambda r, o: train(r, o, epochs=HUGE),
                                   f"argument --epochs: must be an integer in 1..1000000 (a run keeps a table row per "
                                   f"epoch), got {HUGE}"),
    "train_lr_down_underflows": (lambda r, o: train(r, o, "--lr-schedule", "logspace", "--lr-down", 400, epochs=2),
                                 "--lr-down 400: the logspace schedule from --lr 0.02 falls below the smallest "
                                 "positive float (a learning rate of 0) by epoch 2 of 2"),
    "train_workers_beyond_the_machine": (lambda r, o: train(r, o, "--workers", 10 ** 9),
                                         "--workers 1000000000: more DataLoader processes than this machine can run"),
    "distil_workers_beyond_the_machine": (lambda r, o: distil(r, o, "--workers", 10 ** 9),
                                          "--workers 1000000000: more DataLoader processes than this machine"),
    "distil_epochs_beyond_memory": (lambda r, o: distil(r, o, "--lr-schedule", "logspace", epochs=HUGE),
                                    "argument --epochs: must be an integer in 1..1000000"),
    "distil_finetune_epochs_beyond_memory": (lambda r, o: distil(r, o, "--finetune-epochs", HUGE),
                                             "argument --finetune-epochs: must be an integer in 0..1000000"),
    "distil_image_size_too_small": (lambda r, o: distil(r, o, "--image-size", 4, "--teacher-image-size", 4,
                                                        "--teacher-format", "torchvision"),
                                    "--image-size 4: vgg_tiny cannot take 4x4 inputs"),
    "sigma_samples_beyond_memory": (lambda r, o: sigma(r, o, "--samples", HUGE),
                                    f"--samples {HUGE}: a batch of 1 image(s) (--batch-images) would hold"),
    "sigma_steps_beyond_memory": (lambda r, o: sigma(r, o, "--steps", HUGE),
                                  f"--steps {HUGE}: a batch of 1 image(s) (--batch-images) would hold"),
    "sigma_mask_pad_huge": (lambda r, o: sigma(r, o, "--mask-pad", "1e9"),
                            "argument --mask-pad: must be a number in 1..10 (the padded mask is that many times the "
                            "mask), got 1e9"),
    "metrics_bootstrap_beyond_memory": (lambda r, o: metrics(r, o, "--bootstrap", 10 ** 15),
                                        "argument --bootstrap: must be an integer in 1..100000 (the resamples are kept "
                                        "in memory), got 1000000000000000"),
    "metrics_mask_pad_huge": (lambda r, o: metrics(r, o, "--mask-pad", "1e9"),
                              "argument --mask-pad: must be a number in 1..10"),
    "metrics_recorded_mask_pad_huge": (lambda r, o: metrics(r, o, label_sigma=recorded(r.sigma_label, "mask_pad", 1e9),
                                                            distil_sigma=recorded(r.sigma_distil, "mask_pad", 1e9)),
                                       "--mask-pad must be a number in 1..10 (the padded mask is that many times the "
                                       "mask), got 1000000000.0"),
}


def recorded(run: Path, key: str, value) -> Path:
    """A copy of ``run`` whose run.json records the setting ``key`` = ``value``."""
    out = run.parent / f"{run.name}_{key}"
    if not out.exists():
        shutil.copytree(run, out)
        data = json.loads((out / "run.json").read_text())
        data["settings"][key] = value
        (out / "run.json").write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("case", sorted(FRESH))
def test_a_flag_that_cannot_work_is_refused_before_anything_is_written(case, runs, tmp_path, capsys):
    build, expected = FRESH[case]
    out = tmp_path / "out"
    script, argv = build(runs, out)
    line = refused(capsys, script, argv)
    assert expected in line, line
    assert tree(out) == {} and not list(tmp_path.glob(".*")), sorted(tmp_path.rglob("*"))


OVERWRITE = {  # id → (the run --out holds, command, text of the error line)
    "train_image_size_too_small": (lambda r: r.label, lambda r, o: train(r, o, "--overwrite", "--image-size", 8),
                                   "--image-size 8: vgg_tiny cannot take 8x8 inputs"),
    "train_epochs_beyond_memory": (lambda r: r.label, lambda r, o: train(r, o, "--overwrite", epochs=HUGE),
                                   "argument --epochs: must be an integer in 1..1000000"),
    "train_lr_down_underflows": (lambda r: r.label,
                                 lambda r, o: train(r, o, "--overwrite", "--lr-down", 1000, "--lr-schedule", "logspace",
                                                    epochs=3),
                                 "--lr-down 1000: the logspace schedule from --lr 0.02 falls below"),
    "distil_epochs_beyond_memory": (lambda r: r.distil,
                                    lambda r, o: distil(r, o, "--overwrite", "--lr-schedule", "logspace", epochs=HUGE),
                                    "argument --epochs: must be an integer in 1..1000000"),
    "sigma_samples_beyond_memory": (lambda r: r.sigma_label, lambda r, o: sigma(r, o, "--overwrite", "--samples", HUGE),
                                    f"--samples {HUGE}: a batch of 1 image(s)"),
}


@pytest.mark.parametrize("case", sorted(OVERWRITE))
def test_a_refused_overwrite_leaves_the_old_run_byte_identical(case, runs, tmp_path, capsys):
    source, build, expected = OVERWRITE[case]
    out = copy_run(source(runs), tmp_path / "out")
    before = tree(out)
    script, argv = build(runs, out)
    line = refused(capsys, script, argv)
    assert expected in line, line
    assert tree(out) == before
    assert not list(tmp_path.glob(".*")), "a lock or temporary file was left beside --out"


def test_a_batch_larger_than_the_split_and_the_largest_seed_train(runs, tmp_path, capsys):
    """--batch-size 10**20 (once: islice's 'Stop argument') is the whole split per batch; --seed 2**64-1 (once:
    'Overflow when unpacking long long' in the sampler) is in the promised range and trains."""
    out = tmp_path / "out"
    script, argv = train(runs, out, "--batch-size", 10 ** 20, "--seed", 2 ** 64 - 1)
    assert run_case(script, argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_the_sampler_seed_is_the_same_64_bits():
    from kdq.function.runtime import torch_seed
    from kdq.function.train.engine import loader_batch

    assert torch_seed(5) == 5 and torch_seed(2 ** 63 - 1) == 2 ** 63 - 1
    assert torch_seed(2 ** 64 - 1) == -1 and torch_seed(2 ** 63) == -2 ** 63
    # torch reads a negative seed as its 64 bits: -1 seeds exactly as 2**64-1, and -1 + 1 is 0, not an overflow
    a, b = torch.Generator().manual_seed(torch_seed(2 ** 64 - 1)), torch.Generator().manual_seed(2 ** 64 - 1)
    assert torch.equal(torch.randperm(20, generator=a), torch.randperm(20, generator=b))
    assert loader_batch(10 ** 20, 16) == 16 and loader_batch(4, 16) == 4 and loader_batch(8, 0) == 1


def huge_head(num_classes: int) -> nn.Module:
    """A model whose first fc layer needs 256 PiB: it fits on the meta device, not in any address space (so its
    allocation fails at once, however the machine overcommits memory)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2 ** 54), nn.Linear(2 ** 54, num_classes))


def test_a_start_up_step_that_fails_inside_torch_is_one_line_naming_it(runs, tmp_path, capsys):
    out = tmp_path / "out"
    script, argv = train(runs, out, "--arch", f"{__name__}:huge_head", "--image-size", 32)  # the last --arch wins
    line = refused(capsys, script, argv)
    assert "error: building the model: RuntimeError:" in line and "allocate" in line, line


def test_a_start_up_step_error_keeps_its_traceback_with_debug():
    from kdq.function.cli import UserError
    from kdq.function.runtime import startup_step

    with pytest.raises(UserError, match=r"^building the loaders: ValueError: bad shape$") as info:
        with startup_step("building the loaders"):
            raise ValueError("bad shape\nsecond line")
    assert isinstance(info.value.__cause__, ValueError)  # --debug shows where it came from
    with pytest.raises(UserError, match="^already one line$"), startup_step("x"):
        raise UserError("already one line")


# ---- class 6: the torchrun environment -----------------------------------------------------------------------------
ENVIRONMENTS = {  # id → (variables, text of the error line)
    "rank_not_an_integer": ({"RANK": "zero"}, "environment variable RANK='zero' is not an integer"),
    "world_without_torchrun": ({"WORLD_SIZE": "2"},
                               "environment variable WORLD_SIZE=2 asks for a distributed run but RANK, LOCAL_RANK, "
                               "MASTER_ADDR, MASTER_PORT are not set: launch it with torchrun"),
    "rank_outside_the_world": ({"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost",
                                "MASTER_PORT": "29500"}, "environment variable RANK=3 must be in 0..1 (WORLD_SIZE=2)"),
    "world_of_zero": ({"WORLD_SIZE": "0"}, "environment variable WORLD_SIZE=0 must be ≥ 1"),
    "local_rank_negative": ({"LOCAL_RANK": "-1"}, "environment variable LOCAL_RANK=-1 must be ≥ 0"),
    "local_rank_not_an_integer": ({"LOCAL_RANK": "1.5"}, "environment variable LOCAL_RANK='1.5' is not an integer"),
}


@pytest.mark.parametrize("case, stage", [(case, "train") for case in sorted(ENVIRONMENTS)]
                         + [("rank_not_an_integer", "sigma"), ("world_without_torchrun", "sigma")])
def test_a_bad_torchrun_environment_is_one_line(case, stage, runs, tmp_path, capsys, monkeypatch):
    variables, expected = ENVIRONMENTS[case]
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    script, argv = (train if stage == "train" else sigma)(runs, out)
    line = refused(capsys, script, argv)
    assert expected in line, line
    assert tree(out) == {}


# ---- class 7: the preparers read every file through the checked reader ---------------------------------------------
def damaged_cub(base: Path, damage: str) -> Path:
    from tests.test_prepare_data import CUB_CLASSES, CUB_IMAGES, make_cub

    cub = make_cub(base)
    image_id, label, stem, *_ = CUB_IMAGES[0]
    seg = base / "segmentations" / CUB_CLASSES[label - 1] / f"{stem}.png"
    {"truncated": lambda: seg.write_bytes(seg.read_bytes()[:60]), "empty": lambda: seg.write_bytes(b""),
     "text": lambda: seg.write_text("not a picture")}[damage]()
    return seg


def damaged_voc(base: Path, which: str) -> Path:
    from tests.test_prepare_data import VOC_IMAGES, make_voc

    voc = make_voc(base)
    image_id = next(iter(VOC_IMAGES))
    path = {"object": voc / "SegmentationObject" / f"{image_id}.png", "class": voc / "SegmentationClass" /
            f"{image_id}.png", "jpeg": voc / "JPEGImages" / f"{image_id}.jpg"}[which]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3] if which == "jpeg" else data[:60])  # the header stays readable
    return path


PREPARE = {  # id → (make the damaged source (base) → damaged file, preparer, text after the file's name)
    "cub_segmentation_truncated": (lambda b: damaged_cub(b, "truncated"), "cub", "mask {path} cannot be read"),
    "cub_segmentation_empty": (lambda b: damaged_cub(b, "empty"), "cub", "mask {path} is empty (0 bytes)"),
    "cub_segmentation_not_an_image": (lambda b: damaged_cub(b, "text"), "cub",
                                      "mask {path} cannot be read (cannot identify image file"),
    "voc_instances_truncated": (lambda b: damaged_voc(b, "object"), "voc", "mask {path} cannot be read"),
    "voc_classes_truncated": (lambda b: damaged_voc(b, "class"), "voc", "mask {path} cannot be read"),
    "voc_jpeg_truncated": (lambda b: damaged_voc(b, "jpeg"), "voc", "image {path} cannot be read"),
}


@pytest.mark.parametrize("case", sorted(PREPARE))
def test_a_damaged_source_file_is_one_line_naming_it(case, tmp_path, capsys):
    damage, kind, expected = PREPARE[case]
    path = damage(tmp_path / "download")
    src = tmp_path / "download" / ("CUB_200_2011" if kind == "cub" else "VOCdevkit")
    line = refused(capsys, "prepare_data", [kind, "--src", src, "--out", tmp_path / "out",
                                                        "--no-progress"])
    assert f"error: --src: {expected.format(path=path)}" in line, line


# ---- class 9: a second Ctrl-C while the stage cleans up ------------------------------------------------------------
def test_the_interruption_handler_raises_once_then_lets_the_clean_up_finish(capsys):
    from kdq.function.cli import Interruption

    handler = Interruption("stage.py")
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)
    assert handler(signal.SIGINT, None) is None  # the second: one line, no exception in the clean-up
    assert capsys.readouterr().err == ("stage.py: interrupted again: finishing the clean-up first (interrupt once "
                                       "more to quit at once)\n")
    with pytest.raises(KeyboardInterrupt):
        Interruption("stage.py")(signal.SIGTERM, None)  # each run has its own: SIGTERM is a first interruption


CLEAN_UP_SCRIPT = """
import sys, time
from pathlib import Path
from kdq.function.cli import Parser, run

def main(args):
    try:
        print("working", flush=True)
        time.sleep(60)
    finally:
        print("cleaning up", flush=True)
        time.sleep(1.5)
        Path(sys.argv[-1]).write_text("clean")

raise SystemExit(run(lambda: Parser(prog="stage.py"), main, []))
"""


@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT),
                                     (signal.SIGINT, signal.SIGTERM)])
def test_a_second_interrupt_during_the_clean_up_is_quiet_and_the_clean_up_finishes(signals, tmp_path):
    marker = tmp_path / "cleaned"
    # Ctrl-C at its default in the child: a suite started in the background (``pytest &``) ignores SIGINT, which
    # the child would inherit and kdq rightly keep ignoring
    proc = subprocess.Popen([sys.executable, "-c", CLEAN_UP_SCRIPT, str(marker)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "working"
        proc.send_signal(signals[0])
        assert proc.stdout.readline().strip() == "cleaning up"
        proc.send_signal(signals[1])
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert marker.read_text() == "clean", "the second interrupt broke off the clean-up"
    assert err.strip().splitlines() == ["stage.py: interrupted again: finishing the clean-up first (interrupt once "
                                        "more to quit at once)", "stage.py: interrupted; run it again"], err


# ---- class 10: a "complete" run whose recorded checkpoint file is gone ----------------------------------------------
def without(src: Path, out: Path, *names: str) -> Path:
    copy_run(src, out)
    for name in names:
        (out / name).unlink()
    return out


LOST = {  # id → (the run --out holds, with files removed (runs, out), command, text of the error line)
    "train_resume_lost_an_earlier_checkpoint": (
        lambda r, o: without(r.label, o, "1.pth.tar"),
        lambda r, o: train(r, o, "--resume", "--checkpoints", 0, 1, 2, epochs=2),
        "--resume: {out} has lost 1 checkpoint(s) that its run.json records (1.pth.tar); only the last epoch's can "
        "be made again: restore them, or --overwrite to train again"),
    "train_resume_lost_the_first_checkpoint": (
        lambda r, o: without(r.label, o, "0.pth.tar", "1.pth.tar"),
        lambda r, o: train(r, o, "--resume", "--checkpoints", 0, 1, 2, epochs=2),
        "has lost 2 checkpoint(s) that its run.json records (0.pth.tar, 1.pth.tar)"),
    "distil_resume_lost_a_checkpoint": (
        lambda r, o: without(r.distil, o, "0.pth.tar"),
        lambda r, o: distil(r, o, "--resume", "--finetune-epochs", 1, "--checkpoints", 0, 1, 2, epochs=2),
        "--resume: {out} has lost 1 checkpoint(s) that its run.json records (0.pth.tar)"),
}


@pytest.mark.parametrize("case", sorted(LOST))
def test_a_complete_run_that_lost_a_checkpoint_is_not_complete(case, runs, tmp_path, capsys):
    make, build, expected = LOST[case]
    out = make(runs, tmp_path / "out")
    before = tree(out)
    script, argv = build(runs, out)
    line = refused(capsys, script, argv)
    assert expected.format(out=out) in line, line
    assert tree(out) == before


@pytest.mark.parametrize("lost", ["1.pth.tar", "0.pth.tar", "2.pth.tar"])
def test_the_sigma_stage_refuses_a_complete_run_missing_a_recorded_checkpoint(lost, runs, tmp_path, capsys):
    root = without(runs.label, tmp_path / "label", lost)
    out = tmp_path / "out"
    script, argv = sigma(runs, out, root=root)
    line = refused(capsys, script, argv)
    assert (f"--checkpoint_root: {root} records checkpoint(s) that are missing: {root / lost}; restore them, or pass "
            "--checkpoints to fit those present") in line, line
    assert tree(out) == {}
    kept = [e for e in (0, 1, 2) if f"{e}.pth.tar" != lost]  # naming what is there is a choice, and it works
    script, argv = sigma(runs, out, "--checkpoints", *kept, root=root)
    assert run_case(script, argv) == 0


def test_resume_writes_the_lost_last_checkpoint_again(runs, tmp_path, capsys):
    out = without(runs.label, tmp_path / "out", "2.pth.tar")
    script, argv = train(runs, out, "--resume", "--checkpoints", 0, 1, 2, epochs=2)
    assert run_case(script, argv) == 0
    assert "nothing to do" not in capsys.readouterr().err
    again, first = (torch.load(p / "2.pth.tar", weights_only=True) for p in (out, runs.label))
    assert again["epoch"] == first["epoch"] == 2 and again["best_acc1"] == first["best_acc1"]
    assert again["state_dict"].keys() == first["state_dict"].keys()
    assert all(torch.equal(again["state_dict"][k], first["state_dict"][k]) for k in first["state_dict"])


def test_resume_writes_the_lost_final_checkpoint_of_a_distillation_again(runs, tmp_path, capsys):
    out = without(runs.distil, tmp_path / "out", "final.pth.tar")
    script, argv = distil(runs, out, "--resume", "--finetune-epochs", 1, "--checkpoints", 0, 1, 2, epochs=2)
    assert run_case(script, argv) == 0
    assert "nothing to do" not in capsys.readouterr().err
    again, first = (torch.load(p / "final.pth.tar", weights_only=True) for p in (out, runs.distil))
    assert again["phase"] == first["phase"] == "finetune" and again["val_acc1"] == first["val_acc1"]
    assert all(torch.equal(again["state_dict"][k], first["state_dict"][k]) for k in first["state_dict"])
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


# ---- class 11: silently wrong results ------------------------------------------------------------------------------
def with_extra_val_class(data: Path, out: Path) -> Path:
    shutil.copytree(data, out)
    first = sorted((out / "val").iterdir())[0]
    extra = out / "val" / "99_not_trained"
    extra.mkdir()
    shutil.copy(sorted(first.iterdir())[0], extra / "stranger.png")
    (out / "val" / "98_empty").mkdir()  # a folder without images is no class: not refused
    return out


@pytest.mark.parametrize("stage", ["train", "distil", "train_overwrite"])
def test_a_val_class_the_training_split_lacks_is_an_error_naming_it(stage, runs, tmp_path, capsys):
    data = with_extra_val_class(runs.data, tmp_path / "data")
    out = tmp_path / "out"
    if stage == "train_overwrite":
        copy_run(runs.label, out)
    before = tree(out)
    extra = ["--overwrite"] if stage == "train_overwrite" else []
    script, argv = (distil if stage == "distil" else train)(runs, out, *extra)
    argv[argv.index(runs.data)] = data
    line = refused(capsys, script, argv)
    assert (f"--val-split: {data / 'val'} holds class folder(s) that the training split lacks: 99_not_trained (the "
            "net has no output for them)") in line, line
    assert tree(out) == before


def strict_json(path: Path):
    """Parse as strict readers (jq, JSON.parse) do: NaN, Infinity and -Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_the_json_writer_writes_non_finite_numbers_as_null(tmp_path):
    from kdq.function.io.atomic import write_json

    write_json(tmp_path / "x.json", {"a": float("inf"), "b": [1.5, float("nan"), np.float32("-inf")],
                                     "c": np.array([2.0, np.inf]), "d": (np.float64("nan"), 3), "e": "Infinity"})
    assert strict_json(tmp_path / "x.json") == {"a": None, "b": [1.5, None, None], "c": [2.0, None],
                                                "d": [None, 3], "e": "Infinity"}


def test_fit_json_is_strict_json_with_a_note(tmp_path):
    from kdq.function.sigma import layout
    from kdq.function.sigma.run import ImageRecord

    rec = ImageRecord.empty(0, 3, "cls/img.png", np.ones((2, 2), bool), K=2, T=3, shape=(2, 2))
    fit = types.SimpleNamespace(sigma=np.ones((2, 2)), entropy=np.zeros(3), feature_loss=np.zeros(3),
                                penalty_loss=np.zeros(3), sigma_f2=1e-3, best_step=2, steps_run=3,
                                final_lambda=float("inf"))
    rec.store(1, 5, fit, float("nan"), fit.sigma)
    rec.write(tmp_path, [0, 5])
    info = strict_json(layout.image_folder(tmp_path, 0) / layout.FIT_JSON)
    assert info["fits"]["5"]["final_lambda"] is None and info["fits"]["5"]["bg_minus_fg_entropy"] is None
    assert info["notes"] == ["fits.5.final_lambda is inf: written as null (not a JSON number)"]
