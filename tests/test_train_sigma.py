"""sigma/train_sigma.py: docs/method.md §4 layout, the effective rule, exact resume, one-line errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kdq.function.io.atomic import write_json
from kdq.function.io.checkpoint import save_checkpoint
from kdq.function.sigma.layout import (ARRAYS, EFFECT_LIST, FULL_LIST, NON_EFFECT_LIST, array_path, image_folder,
                                   read_names, run_epochs)
from kdq.models import build_model
from tests.helpers import run_script

SCRIPT = "sigma/train_sigma.py"
EPOCHS = (0, 2, 4)
FAST = ("--samples", "4", "--steps", "4", "--break-steps", "1", "--grid", "4", "--no-progress", "--device", "cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt_run(tmp_path_factory) -> Path:
    """A training run of vgg_tiny (4 classes) with checkpoints 0, 2, 4: drifting random weights."""
    run = tmp_path_factory.mktemp("ckpts") / "run"
    torch.manual_seed(0)
    model = build_model("vgg_tiny", 4)
    for e in EPOCHS:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p) * (p.std() if p.numel() > 1 else 1))
        save_checkpoint(run / f"{e}.pth.tar", {"epoch": e, "state_dict": model.state_dict(), "best_acc1": 0.0,
                                               "optimizer": {}})
    write_json(run / "run.json", {"stage": "train_net", "settings": {"epochs": 6}})  # rule from epoch 2
    return run


def sigma(ckpt_run, data, out, *extra):
    return run_script(SCRIPT, "--checkpoint_root", ckpt_run, "--arch", "vgg_tiny", "--layer", "conv",
                      "--data", data, "--split", "train", "--out", out, *FAST, *extra)


def files_of(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != "run.json"}


def test_layout_names_and_shapes(ckpt_run, tiny_data, tmp_path):
    out = tmp_path / "s"
    assert sigma(ckpt_run, tiny_data, out, "--pic-num", "12", "--effect-num", "2") == 0
    full, eff, non = (read_names(out / n) for n in (FULL_LIST, EFFECT_LIST, NON_EFFECT_LIST))
    assert len(full) == 12 and len(eff) == 2 and set(eff) | set(non) <= set(full)
    assert all("/" in n and (tiny_data / "train" / n).is_file() for n in full)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["checkpoints"] == list(EPOCHS)
    assert record["settings"]["samples"] == 4 and record["lambda"] == 7.0 and "torch" in record["versions"]
    assert record["effective_rule_start"] == 2 and run_epochs(out) == list(EPOCHS)
    K, T, g = len(EPOCHS), 4, 4
    shapes = {"best_sigma_entropy": (K, 1, g, g), "entropy": (K, 1, T), "feature_loss": (K, 1, T),
              "penalty_loss": (K, 1, T), "sigma_f_matrix": (K, 1)}
    for name in eff:
        i = full.index(name)
        for arr in ARRAYS:
            a = np.load(array_path(out, i, arr), allow_pickle=False)
            assert a.shape == shapes[arr], arr
        best = np.load(array_path(out, i, "best_sigma_entropy"))
        assert (best >= 1e-3).all() and (best <= 1).all()
        assert (np.load(array_path(out, i, "sigma_f_matrix")) > 0).all()
        assert json.loads((image_folder(out, i) / "fit.json").read_text())["effective"]
    for name in non:
        i = full.index(name)
        assert not image_folder(out, i).exists() and image_folder(out, i, effective=False).is_dir()
        info = json.loads((image_folder(out, i, effective=False) / "fit.json").read_text())
        assert not info["effective"] and "epoch" in info["reason"]
        # fitted from the last checkpoint down to where it was dropped; earlier ones were never fitted
        best = np.load(image_folder(out, i, False) / "npy_files" / "best_sigma_entropy.npy")
        assert (best[-1] > 0).all() and (best[0] == 0).all()


def test_effective_rule_flags(ckpt_run, tiny_data, tmp_path):
    out = tmp_path / "all"
    assert sigma(ckpt_run, tiny_data, out, "--pic-num", "4", "--effective-rule", "off") == 0
    assert len(read_names(out / EFFECT_LIST)) == 4 and read_names(out / NON_EFFECT_LIST) == []
    # the rule only from epoch 5 on: no checkpoint qualifies, so every image stays effective
    late = tmp_path / "late"
    assert sigma(ckpt_run, tiny_data, late, "--pic-num", "4", "--effective-start", "5") == 0
    assert len(read_names(late / EFFECT_LIST)) == 4
    # a rule that applies to the last checkpoint: an image is kept iff its bg - fg entropy gap is ≥ 0 there
    ruled = tmp_path / "ruled"
    assert sigma(ckpt_run, tiny_data, ruled, "--pic-num", "4", "--effective-start", "4") == 0
    full = read_names(ruled / FULL_LIST)
    for i, name in enumerate(full):
        effective = name in read_names(ruled / EFFECT_LIST)
        gap = json.loads((image_folder(ruled, i, effective) / "fit.json").read_text())["fits"]["4"][
            "bg_minus_fg_entropy"]
        assert effective == (gap is not None and gap >= 0)
        # without the rule, the same image has the same files at epoch 4 (noise depends on seed, image, epoch)
        a = np.load(image_folder(ruled, i, effective) / "npy_files" / "best_sigma_entropy.npy")[-1]
        b = np.load(array_path(out, i, "best_sigma_entropy"))[-1]
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch", ["1", "3"])
def test_resume_after_interruption_gives_identical_files(ckpt_run, tiny_data, tmp_path, monkeypatch, batch):
    args = ("--pic-num", "5", "--effect-num", "3", "--batch-images", batch)
    full = tmp_path / "full"
    assert sigma(ckpt_run, tiny_data, full, *args) == 0
    from kdq.function.sigma.run import ImageRecord

    original = ImageRecord.write
    calls = []

    def killed(self, out, epochs):
        calls.append(self.pos)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run dies while writing its second image
        return original(self, out, epochs)

    part = tmp_path / "part"
    monkeypatch.setattr(ImageRecord, "write", killed)
    assert sigma(ckpt_run, tiny_data, part, *args) == 130
    monkeypatch.setattr(ImageRecord, "write", original)
    assert len(list(part.glob("img_*"))) == 1
    (part / ".img_9.half.tmp").mkdir()  # a half-written folder left by the kill is cleaned up
    assert sigma(ckpt_run, tiny_data, part, *args) == 2  # refused without --resume
    assert sigma(ckpt_run, tiny_data, part, *args, "--resume") == 0
    assert files_of(part) == files_of(full)
    record = json.loads((part / "run.json").read_text())
    assert record["status"] == "complete" and record["fits_this_session"] < json.loads(
        (full / "run.json").read_text())["fits_this_session"]  # finished images were not recomputed
    # resuming a complete run, even with another batch size, recomputes nothing
    assert sigma(ckpt_run, tiny_data, part, "--pic-num", "5", "--effect-num", "3", "--resume") == 0
    assert json.loads((part / "run.json").read_text())["fits_this_session"] == 0


def test_batching_gives_the_same_lists_and_close_maps(ckpt_run, tiny_data, tmp_path):
    one, three = tmp_path / "b1", tmp_path / "b3"
    assert sigma(ckpt_run, tiny_data, one, "--pic-num", "5", "--effect-num", "3") == 0
    assert sigma(ckpt_run, tiny_data, three, "--pic-num", "5", "--effect-num", "3", "--batch-images", "3") == 0
    for name in (FULL_LIST, EFFECT_LIST, NON_EFFECT_LIST):
        assert read_names(one / name) == read_names(three / name)
    full = read_names(one / FULL_LIST)
    for name in read_names(one / EFFECT_LIST):
        i = full.index(name)
        np.testing.assert_allclose(np.load(array_path(one, i, "best_sigma_entropy")),
                                   np.load(array_path(three, i, "best_sigma_entropy")), rtol=1e-4)


def _no_masks(tiny_data, tmp_path):
    root = tmp_path / "nomask"
    shutil.copytree(tiny_data / "train", root / "train")
    return root


@pytest.mark.parametrize("case", ["empty_root", "arch", "epoch", "grid", "masks", "samples", "steps", "break",
                                  "occupied", "layer", "resume_other_stage", "resume_other_settings"])
def test_bad_input_is_one_line_exit_2(case, ckpt_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    root, data, extra = ckpt_run, tiny_data, []
    if case == "empty_root":
        root = tmp_path / "empty"
        root.mkdir()
    elif case == "arch":
        extra = ["--arch", "resnet_tiny"]
    elif case == "epoch":
        extra = ["--checkpoints", "0", "3"]
    elif case == "grid":
        extra = ["--grid", "65"]
    elif case == "masks":
        data = _no_masks(tiny_data, tmp_path)
    elif case == "samples":
        extra = ["--samples", "0"]
    elif case == "steps":
        extra = ["--steps", "-1"]
    elif case == "break":
        extra = ["--break-steps", "4"]
    elif case == "layer":
        extra = ["--layer", "fc9"]
    elif case in ("occupied", "resume_other_settings"):
        assert sigma(root, data, out, "--pic-num", "1") == 0
        capsys.readouterr()
        extra = ["--resume", "--steps", "5"] if case == "resume_other_settings" else []
    elif case == "resume_other_stage":
        write_json(out / "run.json", {"stage": "train_net", "settings": {}})
        extra = ["--resume"]
    before = sorted(out.rglob("*")) if out.exists() else None
    try:
        code = sigma(root, data, out, *extra)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0], err
    expected = {"empty_root": "no <epoch>.pth.tar", "arch": "does not fit --arch resnet_tiny",
                "epoch": "it has 0, 2, 4", "grid": "larger than the input size 64", "masks": "no mask",
                "samples": "positive", "steps": "positive", "break": "--break-steps", "occupied": "--resume",
                "layer": "fc9", "resume_other_stage": "not a train_sigma run",
                "resume_other_settings": "steps: 4 → 5"}[case]
    assert expected in err[0]
    if before is None:
        assert not out.exists()  # nothing half-written
    else:
        assert sorted(out.rglob("*")) == before


@pytest.mark.slow
def test_torchrun_two_ranks_write_the_same_files_and_resume_with_one(ckpt_run, tiny_data, tmp_path):
    """Issue 8 §2: 2 ranks (gloo) write byte-identical files to 1 rank; a cut-short 2-rank run resumes with 1."""
    import os
    import subprocess
    import sys

    args = ("--pic-num", "12", "--effect-num", "3", "--batch-images", "2")
    one = tmp_path / "one"
    assert sigma(ckpt_run, tiny_data, one, *args) == 0  # one thread, as torchrun gives each rank
    two = tmp_path / "two"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / SCRIPT), "--checkpoint_root", str(ckpt_run), "--arch", "vgg_tiny", "--layer", "conv",
           "--data", str(tiny_data), "--split", "train", "--out", str(two), *FAST, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    def listed(run: Path) -> dict[str, bytes]:
        full = read_names(run / FULL_LIST)
        keep = {FULL_LIST, EFFECT_LIST, NON_EFFECT_LIST}
        for name in read_names(run / EFFECT_LIST) + read_names(run / NON_EFFECT_LIST):
            i = full.index(name)
            keep |= {f"img_{i}_effect", f"img_{i}_non_effect"}
        return {k: v for k, v in files_of(run).items() if k.split("/")[0] in keep}

    assert listed(two) == listed(one) and len(read_names(two / EFFECT_LIST)) == 3
    # cut the 2-rank run short (as if killed before its last images were written) and resume with 1 rank
    for folder in sorted(two.glob("img_*"))[-3:]:
        shutil.rmtree(folder)
    assert sigma(ckpt_run, tiny_data, two, *args, "--resume") == 0
    assert listed(two) == listed(one)


def test_draw_is_the_originals_name_for_name(ckpt_run, tiny_data, tmp_path):
    """full_name_list.txt is what the original's SelectDataSet picks: the split listed class by class (os.listdir,
    sorted), then random.seed(pic_seed); random.sample(range(N), pic_num)."""
    import os
    import random

    root = tiny_data / "train"
    listing = [f"{cls}/{im}" for cls in sorted(os.listdir(root)) for im in sorted(os.listdir(root / cls))]
    for pic_seed in (0, 5):
        out = tmp_path / f"draw{pic_seed}"
        assert sigma(ckpt_run, tiny_data, out, "--pic-num", "7", "--effect-num", "1", "--steps", "1",
                     "--break-steps", "0", "--pic-seed", pic_seed) == 0
        random.seed(pic_seed)
        assert read_names(out / FULL_LIST) == [listing[i] for i in random.sample(range(len(listing)), 7)]


def test_uneven_grid_runs_as_the_originals_nearest_upsampling(ckpt_run, tiny_data, tmp_path):
    out = tmp_path / "g5"  # 64 px with 5 cells: cells of 12 or 13 pixels (AlexNet's 227 with 16, likewise)
    assert sigma(ckpt_run, tiny_data, out, "--pic-num", "1", "--grid", "5", "--effective-rule", "off") == 0
    assert np.load(array_path(out, 0, "best_sigma_entropy")).shape[-2:] == (5, 5)


def test_default_checkpoints_are_the_originals_schedule(ckpt_run, tiny_data, tmp_path):
    """A run holding every epoch (as the original's train_net writes) is fitted on 0 2 5 … 150 only; one holding
    400.pth.tar on the 400-epoch list; a run without all of them on every checkpoint it has."""
    from kdq.function.io.checkpoint import list_checkpoints
    from kdq.function.sigma.run import default_epochs

    one = next(iter(list_checkpoints(ckpt_run).values()))
    every = tmp_path / "every"
    every.mkdir()
    for e in range(151):
        (every / f"{e}.pth.tar").symlink_to(one)
    assert default_epochs(list_checkpoints(every)) == [0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 70, 90, 110, 130, 150]
    for e in range(151, 401):
        (every / f"{e}.pth.tar").symlink_to(one)
    assert default_epochs(list_checkpoints(every))[-7:] == [170, 190, 240, 280, 320, 360, 400]
    (every / "90.pth.tar").unlink()
    assert default_epochs(list_checkpoints(every)) == sorted(e for e in range(401) if e != 90)
    # the stage itself: an every-epoch run of 150 epochs fits the 15 epochs of the schedule
    run = tmp_path / "run150"
    run.mkdir()
    for e in range(151):
        (run / f"{e}.pth.tar").symlink_to(one)
    out = tmp_path / "s150"
    assert sigma(run, tiny_data, out, "--pic-num", "1", "--effective-rule", "off", "--steps", "1",
                 "--break-steps", "0") == 0
    record = json.loads((out / "run.json").read_text())
    assert record["checkpoints"] == [0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 70, 90, 110, 130, 150]
    assert record["effective_rule_start"] is None and record["total_epochs"] == 150


def test_ilsvrc_data_default_to_the_central_square(ckpt_run, tiny_data, tmp_path):
    data = _no_masks(tiny_data, tmp_path)
    write_json(data / "dataset.json", {"preparer": "ilsvrc", "status": "complete"})
    out = tmp_path / "ilsvrc"
    assert sigma(ckpt_run, data, out, "--pic-num", "2") == 0  # no mask anywhere: the central square
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["foreground"] == "central" and settings["missing_mask"] == "central"
    # box masks where they exist, the central square for the images without one
    assert sigma(ckpt_run, data, tmp_path / "boxes", "--pic-num", "2", "--foreground", "masks") == 0
    assert sigma(ckpt_run, data, tmp_path / "strict", "--pic-num", "2", "--foreground", "masks",
                 "--missing-mask", "error") == 2


# demo-like fit settings (Makefile SIGMA_FLAGS): with only 4 noise samples a ReLU kink crossed by a float-rounding
# difference moved one map's log σ* by 3e-4; at these settings the largest difference measured was 7.5e-6
COMPILE_FIT = ("--pic-num", "4", "--effective-rule", "off", "--samples", "16", "--steps", "20", "--break-steps", "5",
               "--lr", "4e-4", "--grid", "8")


@pytest.mark.slow
def test_compile_gives_the_same_maps_and_resumes_without_it(ckpt_run, tiny_data, tmp_path):
    """--compile (torch.compile, inductor) changes the kernels only: the same σ* steps, log σ* within 1e-4."""
    import torch._dynamo

    torch._dynamo.reset()
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert sigma(ckpt_run, tiny_data, eager, *COMPILE_FIT) == 0
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert sigma(ckpt_run, tiny_data, compiled, *COMPILE_FIT, "--compile") == 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it really was compiled
    assert json.loads((compiled / "run.json").read_text())["settings"]["compile"] is True
    full = read_names(eager / FULL_LIST)
    assert read_names(compiled / EFFECT_LIST) == read_names(eager / EFFECT_LIST) == full
    for i in range(len(full)):
        a, b = (np.load(array_path(r, i, "best_sigma_entropy")) for r in (eager, compiled))
        np.testing.assert_allclose(np.log(b), np.log(a), rtol=0, atol=1e-4)
        steps = [{e: f["best_step"] for e, f in json.loads((image_folder(r, i) / "fit.json").read_text())[
            "fits"].items()} for r in (eager, compiled)]
        assert steps[0] == steps[1]
    # a runtime option, not a result-defining one: the compiled run resumes without it (nothing left to do)
    assert sigma(ckpt_run, tiny_data, compiled, *COMPILE_FIT, "--resume") == 0
    assert json.loads((compiled / "run.json").read_text())["fits_this_session"] == 0
    torch._dynamo.reset()


def test_compile_failure_is_one_line_exit_2(ckpt_run, tiny_data, tmp_path, monkeypatch, capsys):
    """Without a working C++ compiler, --compile stops with one line naming the flag."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # a cached graph would need no compiler
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nor would cached kernels
    assert sigma(ckpt_run, tiny_data, tmp_path / "out", "--pic-num", "1", "--compile") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--compile: torch.compile failed" in err[0] and "run without --compile" in err[0], err
    torch._dynamo.reset()


def test_resume_refuses_another_input_size_when_the_training_run_records_none(ckpt_run, tiny_data, tmp_path,
                                                                              capsys):
    """The training run (the original's kind) records no model: --image-size is the sigma run's own setting, and
    a resume at another size would mix maps of two inputs."""
    out = tmp_path / "s"
    assert sigma(ckpt_run, tiny_data, out, "--pic-num", "2", "--effect-num", "1") == 0
    capsys.readouterr()
    assert sigma(ckpt_run, tiny_data, out, "--pic-num", "2", "--effect-num", "1", "--image-size", "32",
                 "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "was made with other settings (--image-size: 64 → 32)" in err, err
