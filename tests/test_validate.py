"""make validate: the background cue of the embedded dataset (planted where its mask says, on background only, in
the cued split only, class-coded; the default dataset unchanged), the Makefile's validate and SEEDS commands, and
bench/validate.py's table on fabricated runs.  No test asserts a scientific direction."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdq.function.data.masks import mask_to_grid
from kdq.function.data.synthetic import cue_places, write_dataset
from tests.helpers import ROOT, load_file, run_script

PER_CLASS = {"teacher": 1, "train": 3, "val": 1}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _digest(root: Path) -> str:
    """sha256 over every file below ``root``: its relative path, then its decoded pixels (PNG) or its bytes."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(_pixels(p).tobytes() if p.suffix == ".png" else p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def cued_and_clean(tmp_path_factory) -> tuple[Path, Path]:
    """The same 2-class, 64 px dataset with and without the background cue on the train split."""
    base = tmp_path_factory.mktemp("cue")
    write_dataset(base / "clean", seed=5, size=64, num_classes=2, per_class=PER_CLASS, show_progress=False)
    write_dataset(base / "cued", seed=5, size=64, num_classes=2, per_class=PER_CLASS, show_progress=False,
                  cue_splits=("train",))
    return base / "cued", base / "clean"


def _train_images(root: Path) -> list[Path]:
    return sorted((root / "train").rglob("*.png"))


def test_the_cue_is_pasted_exactly_where_its_mask_says(cued_and_clean):
    """A cued image is its clean twin with a 16×16 patch (1/4 of 64 px) pasted inside the cue mask: a white frame
    around a saturated colour, and not a pixel changed outside it."""
    cued, clean = cued_and_clean
    images = _train_images(cued)
    assert len(images) == 2 * PER_CLASS["train"]
    for path in images:
        rel = path.relative_to(cued / "train")
        image, twin = _pixels(path), _pixels(clean / "train" / rel)
        cue = _pixels(cued / "cue" / "train" / rel) > 0
        ys, xs = np.nonzero(cue)
        assert cue.sum() == 256 and np.ptp(ys) == 15 and np.ptp(xs) == 15  # one 16×16 square
        assert not (image != twin).any(-1)[~cue].any(), f"{rel}: pixels outside the cue mask changed"
        patch = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(int)
        frame = np.ones((16, 16), bool)
        frame[1:-1, 1:-1] = False
        assert (patch[frame] == 255).all()  # the white frame
        inside = patch[~frame]
        assert (inside == inside[0]).all() and inside[0].max() == 255  # one saturated colour (value 1)


def test_the_cue_lies_on_background_pixels_and_cells(cued_and_clean):
    """The cue never touches the object: no shared pixel, and no foreground cell of the σ grid (g = 16) at the tiny
    nets' S = 64 or at S = 224 with the bilinear mask rule, whose widening the clearance allows for."""
    cued, _ = cued_and_clean
    for path in _train_images(cued):
        rel = path.relative_to(cued / "train")
        seg, cue = _pixels(cued / "seg" / "train" / rel), _pixels(cued / "cue" / "train" / rel)
        assert not ((seg > 0) & (cue > 0)).any()
        for size in (64, 224):
            assert not (mask_to_grid(seg, size, 16) & mask_to_grid(cue, size, 16)).any(), (rel, size)


def test_cue_places_by_hand():
    """A 6×6 image whose object is pixel (0, 0): a 2×2 patch at clearance 1 may not touch rows/columns 0–1 together,
    so of the 5 × 5 top-left corners the four with y ≤ 1 and x ≤ 1 are out; at clearance 0 only (0, 0) is."""
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = True
    places = cue_places(mask, 2, 1)
    assert len(places) == 21 and not any(y <= 1 and x <= 1 for y, x in places.tolist())
    assert len(cue_places(mask, 2, 0)) == 24 and [0, 0] not in cue_places(mask, 2, 0).tolist()


def test_the_cue_is_class_coded(cued_and_clean):
    """Class 0 of 2 has hue 0 (red, 255 0 0), class 1 hue 1/2 (cyan, 0 255 255): the colour tells the class."""
    cued, _ = cued_and_clean
    expected = {0: [255, 0, 0], 1: [0, 255, 255]}
    for path in _train_images(cued):
        label = int(path.parent.name[:2])
        cue = _pixels(cued / "cue" / "train" / path.relative_to(cued / "train")) > 0
        ys, xs = np.nonzero(cue)
        centre = _pixels(path)[ys.min() + 7, xs.min() + 7]
        assert centre.tolist() == expected[label], path


def test_only_the_cued_split_changes(cued_and_clean):
    """teacher and val are byte for byte the clean dataset's and have no cue masks; train's object masks are
    unchanged; dataset.json records the option, the clean one does not mention it."""
    cued, clean = cued_and_clean
    for split in ("teacher", "val"):
        assert _digest(cued / split) == _digest(clean / split)
        assert _digest(cued / "seg" / split) == _digest(clean / "seg" / split)
        assert not (cued / "cue" / split).exists()
    assert _digest(cued / "seg" / "train") == _digest(clean / "seg" / "train")
    assert sorted(p.name for p in (cued / "cue").iterdir()) == ["train"]
    record = json.loads((cued / "dataset.json").read_text())
    assert record["background_cue"]["splits"] == ["train"]
    assert record["background_cue"]["masks"] == "cue/<split>/<class>/<stem>.png"
    assert "background_cue" not in json.loads((clean / "dataset.json").read_text())


def test_default_dataset_is_what_the_code_before_the_cue_wrote(tmp_path):
    """Regression guard: without the option the images and masks are the ones the generator wrote before the cue
    existed (the digest of every file but dataset.json, computed with the code of HEAD e114a17, whose whole-folder
    digest was HEAD 4bc038e's), and dataset.json is that code's plus ``"modality": "image"`` (#24)."""
    write_dataset(tmp_path / "d", 3, 32, 2, {"teacher": 1, "train": 2, "val": 1}, False)
    manifest = json.loads((tmp_path / "d" / "dataset.json").read_text())
    (tmp_path / "d" / "dataset.json").unlink()
    assert _digest(tmp_path / "d") == "f86f3840b664d076f28dd0a249079ab139c730120b568f896312d150c2d393a3"
    assert manifest.pop("modality") == "image"
    assert list(manifest) == ["generator", "seed", "image_size", "classes", "per_class", "style"]
    assert (manifest["generator"], manifest["seed"], manifest["image_size"], manifest["classes"],
            manifest["per_class"]) == ("kdq.synthetic", 3, 32, ["00_red_disk", "01_blue_disk"],
                                       {"teacher": 1, "train": 2, "val": 1})


def test_make_dataset_background_cue_flag(tmp_path):
    out = tmp_path / "cued"
    assert run_script("make_dataset", "--out", out, "--num-classes", "2", "--image-size", "32",
                      "--teacher-per-class", "1", "--train-per-class", "1", "--val-per-class", "1",
                      "--background-cue", "--no-progress") == 0
    assert sorted(str(p.relative_to(out / "cue")) for p in (out / "cue").rglob("*.png")) == \
        ["train/00_red_disk/img_00000.png", "train/01_blue_disk/img_00001.png"]
    assert json.loads((out / "dataset.json").read_text())["background_cue"]["side_px"] == 8  # 32 / 4


# ---- the Makefile -----------------------------------------------------------------------------------------

def _make_n(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    # -B: every command, whatever runs a make in the working tree left behind
    done = subprocess.run(["make", "-n", "-B", "--no-print-directory", "-C", str(ROOT), *args, "VENV=/nonexistent/venv"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.replace("\\\n\t", "").replace("\\\n", "")


def _commands(text: str, script: str) -> list[str]:
    return [line for line in text.splitlines() if f" {script} " in line]


def test_make_n_validate_lists_every_command():
    text = _make_n("validate")
    data = _commands(text, "kdq.function.stages.make_dataset")
    assert len(data) == 1 and "--out data/validate" in data[0] and "--background-cue" in data[0]
    assert len(_commands(text, "train_net/train_net.py")) == 2  # teacher (clean split) and label net (cued split)
    assert any("--split teacher" in c for c in _commands(text, "train_net/train_net.py"))
    assert len(_commands(text, "distillation/distillation.py")) == 1
    sigma = _commands(text, "sigma/train_sigma.py")
    assert len(sigma) == 3 and sum("--checkpoints 0 --out runs/validate/sigma_untrained/fc1" in c for c in sigma) == 1
    metrics = _commands(text, "sigma/find_knowledge_new.py")
    assert len(metrics) == 2
    assert any("--label-sigma runs/validate/sigma_label/fc1 --distil-sigma runs/validate/sigma_label/fc1" in c
               for c in metrics)  # the same run given twice
    fgbg = _commands(text, "bench/sigma_fg_bg.py")
    assert len(fgbg) == 2 and sum("--shuffle-masks" in c for c in fgbg) == 1
    assert len(_commands(text, "bench/validate.py")) == 1


def test_make_n_demo_with_seeds_runs_each_seed_and_one_report():
    text = _make_n("demo", "SEEDS=0 1 2")
    label = _commands(text, "train_net/train_net.py")
    assert [c for c in label if "--split teacher" in c] and len(label) == 4  # the teacher once
    for seed, folder in (("0", "runs/demo"), ("1", "runs/demo/seed1"), ("2", "runs/demo/seed2")):
        assert any(f"--seed {seed} --out {folder}/label " in c for c in label)
        assert any(f"--seed {seed}  --out {folder}/distil/fc1 " in c
                   for c in _commands(text, "distillation/distillation.py"))
        for net in ("sigma_label", "sigma_distil"):
            assert any(f"--seed {seed} --out {folder}/{net}/fc1 " in c for c in _commands(text, "sigma/train_sigma.py"))
    assert [c for c in label if "--split teacher" in c][0].count("--seed 0 --out runs/demo/teacher") == 1
    metrics = _commands(text, "sigma/find_knowledge_new.py")
    assert len(metrics) == 1
    assert ("--label-sigma runs/demo/sigma_label/fc1 runs/demo/seed1/sigma_label/fc1 runs/demo/seed2/sigma_label/fc1 "
            "--distil-sigma runs/demo/sigma_distil/fc1 runs/demo/seed1/sigma_distil/fc1 "
            "runs/demo/seed2/sigma_distil/fc1 --label-run runs/demo/label runs/demo/seed1/label runs/demo/seed2/label "
            "--distil-run runs/demo/distil/fc1 runs/demo/seed1/distil/fc1 runs/demo/seed2/distil/fc1 ") in metrics[0]
    assert "--out runs/demo/seeds_0_1_2/metrics_fc1 " in metrics[0]


def test_make_n_demo_default_is_one_seed_in_the_readme_folders():
    text = _make_n("demo")
    assert "seed1" not in text and "seeds_" not in text
    assert len(_commands(text, "train_net/train_net.py")) == 2
    metrics = _commands(text, "sigma/find_knowledge_new.py")
    assert len(metrics) == 1 and "--label-sigma runs/demo/sigma_label/fc1 --distil-sigma runs/demo/sigma_distil/fc1 " \
        "--label-run runs/demo/label --distil-run runs/demo/distil/fc1 " in metrics[0]
    assert "--out runs/demo/metrics_fc1 " in metrics[0]


PY = "/nonexistent/venv/bin/python"
# every stage command of `make -n demo`, as the Makefile wrote them before the demo ran its stages at once (issue 26),
# each with --threads 2 (THREADS, default 2: the same whatever JOBS)
DEMO_COMMANDS = [
    f"{PY} -m kdq.function.stages.make_dataset --out data/embedded --seed 0 --overwrite",
    f"{PY} train_net/train_net.py --arch vgg_tiny --data data/embedded --split train --val-split val --epochs 20 "
    "--checkpoints 0 2 5 10 15 20 --batch-size 16 --lr 0.02 --device cpu --threads 2 --seed 0 --out runs/demo/label "
    "--resume",
    f"{PY} sigma/train_sigma.py --checkpoint_root runs/demo/label --arch vgg_tiny --layer fc1 --data data/embedded "
    "--split train --pic-num 48 --effect-num 24 --samples 16 --steps 20 --break-steps 5 --lr 4e-4 --batch-images 6 "
    "--device cpu --threads 2 --seed 0 --out runs/demo/sigma_label/fc1 --resume",
    f"{PY} train_net/train_net.py --arch vgg_tiny --data data/embedded --split teacher --val-split val --epochs 20 "
    "--checkpoints 20 --batch-size 16 --lr 0.02 --device cpu --threads 2 --seed 0 --out runs/demo/teacher --resume",
    f"{PY} distillation/distillation.py --teacher_checkpoint runs/demo/teacher/20.pth.tar --teacher-arch vgg_tiny "
    "--arch vgg_tiny --layer fc1 --data data/embedded --split train --val-split val --epochs 20 --finetune-epochs 20 "
    "--checkpoints 0 2 5 10 15 20 --batch-size 16 --lr 0.02 --device cpu --threads 2 --seed 0  "
    "--out runs/demo/distil/fc1 --resume",
    f"{PY} sigma/train_sigma.py --checkpoint_root runs/demo/distil/fc1 --arch vgg_tiny --layer fc1 --data data/embedded "
    "--split train --pic-num 48 --effect-num 24 --samples 16 --steps 20 --break-steps 5 --lr 4e-4 --batch-images 6 "
    "--device cpu --threads 2 --seed 0 --out runs/demo/sigma_distil/fc1 --resume",
    f"{PY} sigma/find_knowledge_new.py --label-sigma runs/demo/sigma_label/fc1 --distil-sigma runs/demo/sigma_distil/fc1 "
    "--label-run runs/demo/label --distil-run runs/demo/distil/fc1 --data data/embedded --split train --layer fc1 "
    "--bootstrap 1000 --threads 2 --seed 0 --out runs/demo/metrics_fc1 --overwrite",
    f"{PY} -m kdq.function.stages.summarize_runs runs/demo",
]


def _stage_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(PY) and " pip " not in line]


def test_make_n_demo_lists_every_stage_command_whatever_jobs():
    """One at a time (JOBS, default 1) or at once, the demo's commands are the same, each once, with THREADS threads
    a job: the same files whatever JOBS; THREADS reaches every stage."""
    assert _stage_lines(_make_n("demo")) == DEMO_COMMANDS  # one at a time: in the prerequisites' order
    for args in (("JOBS=2",), ("-j2",), ("-j3",)):
        parallel = _stage_lines(_make_n("demo", *args))
        assert sorted(parallel) == sorted(DEMO_COMMANDS)
        assert parallel[0] == DEMO_COMMANDS[0] and parallel[-2:] == DEMO_COMMANDS[-2:]  # the dataset first, report last
    one = _stage_lines(_make_n("demo", "JOBS=2", "THREADS=1"))
    assert sorted(one) == sorted(c.replace("--threads 2", "--threads 1") for c in DEMO_COMMANDS)


def test_make_n_study_builds_both_archs_after_one_dataset():
    text = _make_n("study")
    submakes = [line for line in text.splitlines() if line.startswith("make ")]
    assert len(submakes) == 2 and all("--threads $(THREADS)" in line for line in submakes)
    for arch in ("vgg_tiny", "resnet_tiny"):
        assert sum(f"RUNS=runs/study/{arch} ARCH={arch} " in line for line in submakes) == 1
        assert len([c for c in _commands(text, "sigma/train_sigma.py") if f"runs/study/{arch}/sigma_" in c]) == 8
    assert all("--threads 2 " in c for c in _commands(text, "train_net/train_net.py"))
    assert text.splitlines()[-1] == f"{PY} -m kdq.function.stages.summarize_runs runs/study --report " \
        "runs/study/report.md --overwrite"


# ---- bench/validate.py on fabricated runs -----------------------------------------------------------------

def _metrics_json(path: Path, rows: dict) -> None:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"settings": {"b": 0.2}, "layers": {"fc1": {"metrics": rows}}}))


def _row(label, distil, lo, hi, verdict, predicted="distil > label"):
    return {"label": label, "distil": distil, "difference": distil - label, "difference_ci": [lo, hi],
            "verdict": verdict, "predicted": predicted}


def test_validate_table_on_fabricated_metrics(tmp_path, capsys):
    runs, data = tmp_path / "runs", tmp_path / "data"
    data.mkdir()
    _metrics_json(runs / "metrics_fc1", {"N_bg": _row(3.0, 1.5, -2.0, -1.0, "supported", "distil < label"),
                                         "lambda": _row(0.4, 0.5, -0.05, 0.2, "same sign, not significant")})
    (runs / "control_same_fc1.log").write_text("error: --distil-sigma: runs/x and runs/x are the same sigma run "
                                               "given twice\nexit status 2\n")
    assert run_script("bench/validate.py", "--runs", runs, "--data", data, "--json", tmp_path / "v.json") == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "v.json").read_text())["rows"]
    by = {(r["experiment"], r["metric"]): r for r in rows}
    n_bg, lam = by[("background shortcut", "N_bg")], by[("background shortcut", "λ")]
    assert n_bg["agrees"] == "yes" and n_bg["interval"] == "[-2, -1]" and n_bg["measured"].startswith("-1.5 ")
    assert lam["agrees"] == "direction only"
    same = [r for r in rows if r["experiment"] == "same run twice"]
    assert len(same) == 1 and same[0]["agrees"] == "yes (refused)" and "given twice" in same[0]["measured"]
    missing = [r for r in rows if r["agrees"] == "n/a"]
    assert {r["experiment"] for r in missing} >= {"shuffled masks", "untrained net (checkpoint 0)"}
    assert out.splitlines()[0] == "| experiment | metric | expected | measured (distil − label) | interval | agrees? |"


def test_validate_same_run_control_that_reports(tmp_path):
    """A metrics stage that answers the same run given twice with all differences 0 and no verdict agrees; one
    that calls a difference 'supported' does not."""
    validate = load_file("bench/validate.py")
    log = tmp_path / "same.log"
    log.write_text("warning: the same run given twice\nexit status 0\n")
    _metrics_json(tmp_path / "same", {"N_fg": _row(2.0, 2.0, 0.0, 0.0, "no verdict: the interval has zero width"),
                                      "rho": _row(0.5, 0.5, 0.0, 0.0, "no difference"),
                                      "slope": _row(1.0, 1.0, 0.0, 0.0, None, predicted=None)})
    rows = validate.same_run_rows(log, tmp_path / "same" / "metrics.json", "fc1")
    assert len(rows) == 1 and rows[0].agrees == "yes" and rows[0].metric == "2 predicted metrics"
    assert "warned" in rows[0].measured
    _metrics_json(tmp_path / "bad", {"N_fg": _row(2.0, 2.5, 0.1, 0.9, "supported")})
    assert validate.same_run_rows(log, tmp_path / "bad" / "metrics.json", "fc1")[0].agrees == "no"


def test_cue_rates_and_area_share_by_hand():
    """2 images, one checkpoint, a 2×2 grid: cell (0,0) foreground, (0,1) the cue, (1,0) and (1,1) other
    background.  Entropies (image 1; image 2): fg 0, 0; cue −1, 0; others 0, 0 and 0, 0.
    H̄_bg = mean of the images' background means = ((−1+0+0)/3 + 0)/2 = −1/6; a concept is H̄_bg − H > 0.2:
    image 1's cue (−1/6 + 1 = 0.83) only.  Cue rate 1/2, other background 0/4; fg share of concepts 0 against
    fg share of cells 1/4: excess −1/4."""
    validate = load_file("bench/validate.py")
    H = np.zeros((2, 1, 2, 2))
    H[0, 0, 0, 1] = -1.0
    fg = np.zeros((2, 2, 2), bool)
    fg[:, 0, 0] = True
    cue = np.zeros((2, 2, 2), bool)
    cue[:, 0, 1] = True
    maps = validate.Maps(["a", "b"], H, fg, cue)
    assert validate.cue_rates(maps, 0.2) == (0.5, 0.0)
    np.testing.assert_allclose(validate.fg_share_excess(H, fg, 0.2), [-0.25, 0.0, 0.25])


def test_paper_rule_keeps_by_hand():
    """A 20-epoch run: the rule applies from epoch round(40 · 20 / 150) = 5.  Image 1 keeps more noise on its
    background (σ 0.5) than on its foreground (σ 0.1) at epoch 10: kept (its reversed map at epoch 0, before the
    rule starts, does not count).  Image 2 keeps more on its foreground (σ 0.9) at both epochs: dropped."""
    validate = load_file("bench/validate.py")
    fg = np.zeros((2, 2, 2), bool)
    fg[:, 0, 0] = True
    sigma = np.full((2, 2, 2, 2), 0.5)
    sigma[0, :, 0, 0] = 0.1
    sigma[1, :, 0, 0] = 0.9
    sigma[0, 0, 0, 0] = 0.9  # image 1 reversed at epoch 0 only
    maps = validate.Maps(["a", "b"], np.log(sigma), fg, np.zeros_like(fg), sigma, [0, 10], 20)
    assert validate.paper_rule_keeps(maps).tolist() == [True, False]
