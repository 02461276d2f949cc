"""sigma/find_knowledge_new.py with several training runs per net (`--label-sigma A B C --distil-sigma D E F`), on
fabricated sigma and training runs: per-run values, the two-level interval, and the refusals of runs that do not
belong together."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import one_error_line, run_script
from tests.test_find_knowledge import sigma_of, write_sigma_run, write_training_run

SCRIPT = "sigma/find_knowledge_new.py"
NAMES = [f"cls/{i:02d}.png" for i in range(12)]
EPOCHS = [0, 5, 10]
# per net and run: which images have their foreground cell (0, 0) as a concept at epochs 5 and 10
CONCEPTS = {"label": [[1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0],
                      [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
            "distil": [[1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1],
                       [0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1]]}


def settings(seed: int, **over) -> dict:
    return {"arch": "vgg_tiny", "epochs": 10, "lr": 0.02, "batch_size": 16, "seed": seed, **over}


@pytest.fixture()
def seeds_case(tmp_path):
    """A dataset of 12 images (8×8 px, foreground = the top-left quarter), three label and three distil training
    runs (seeds 0, 1, 2) and a sigma run of each at layer conv, grid 2."""
    data = tmp_path / "data"
    for name in NAMES:
        for folder, array in (("train", np.full((8, 8, 3), 90, np.uint8)),
                              ("seg/train", np.kron([[1, 0], [0, 0]], np.ones((4, 4))).astype(np.uint8) * 255)):
            path = data / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    case = {"data": data, "tmp": tmp_path}
    for net, stage in (("label", "train_net"), ("distil", "distillation")):
        case[f"{net}_sigma"], case[f"{net}_run"] = [], []
        for seed, concept in enumerate(CONCEPTS[net]):
            wd = np.zeros((4, 11))
            wd[0, 1:] = 1.0 + 0.1 * seed + (0.5 if net == "label" else 0.0)  # D(5) and D(10) differ by run and net
            run = write_training_run(tmp_path / f"{net}{seed}", wd, {"stage": stage, "settings": settings(seed)})
            maps = {}
            for i, name in enumerate(NAMES):
                H = np.zeros((3, 2, 2))
                H[1:, 0, 0] = -1.0 * concept[i]
                maps[name] = sigma_of(H)
            sigma = write_sigma_run(tmp_path / f"sigma_{net}{seed}", NAMES, NAMES, maps,
                                    {"stage": "train_sigma", "settings": {"checkpoint_root": str(run), "layer": "conv",
                                                                          "grid": 2, "seed": seed},
                                     "checkpoints": EPOCHS})
            case[f"{net}_sigma"].append(sigma)
            case[f"{net}_run"].append(run)
    return case


def args(case, out, label=None, distil=None, *extra):
    label = case["label_sigma"] if label is None else label
    distil = case["distil_sigma"] if distil is None else distil
    return ["--label-sigma", *label, "--distil-sigma", *distil, "--data", case["data"], "--split", "train",
            "--layer", "conv", "--image-size", "8", "--bootstrap", "200", "--no-figures", "--out", out, *extra]


def test_three_runs_per_net_give_per_run_values_and_a_two_level_interval(seeds_case, tmp_path):
    out = tmp_path / "report"
    assert run_script(SCRIPT, *args(seeds_case, out)) == 0
    layer = json.loads((out / "metrics.json").read_text())["layers"]["conv"]
    n_fg = layer["metrics"]["N_fg"]
    # by hand: each run's N_fg is its share of images with a concept; the pooled value is the mean over runs
    per_run = {net: [sum(c) / 12 for c in CONCEPTS[net]] for net in CONCEPTS}
    assert n_fg["per_run"] == {net: pytest.approx(v) for net, v in per_run.items()}
    assert n_fg["label"] == pytest.approx(np.mean(per_run["label"]))
    assert n_fg["distil"] == pytest.approx(np.mean(per_run["distil"]))
    assert n_fg["spread"]["label"] == pytest.approx(np.std(per_run["label"], ddof=1))
    assert layer["bootstrap"]["training_runs"] == {"label": 3, "distil": 3}
    assert "two-level" in layer["bootstrap"]["method"]
    assert [r["seed"] for r in layer["training_runs"]["distil"]] == [0, 1, 2]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 * 3 * 12 and {r["run"] for r in rows} == {"1", "2", "3"}
    report = (out / "report.md").read_text()
    assert "## Per training run" in report and "## Settings that are not the paper's" in report
    assert "one training run of" not in report  # three of each: the intervals cover the seeds


def test_one_run_per_net_says_the_interval_covers_image_sampling_only(seeds_case, tmp_path):
    out = tmp_path / "report"
    assert run_script(SCRIPT, *args(seeds_case, out, seeds_case["label_sigma"][:1], seeds_case["distil_sigma"][:1])) == 0
    meta = json.loads((out / "metrics.json").read_text())
    assert any("one training run of the label and the distil net: the intervals cover image sampling only" in item
               for item in meta["not_paper_settings"])
    assert "image sampling only" in meta["layers"]["conv"]["bootstrap"]["method"]
    assert "## Per training run" not in (out / "report.md").read_text()


def test_two_runs_with_the_same_seed_are_refused(seeds_case, tmp_path, capsys):
    run = seeds_case["label_run"][1] / "run.json"
    run.write_text(json.dumps({"stage": "train_net", "settings": settings(0)}))
    assert run_script(SCRIPT, *args(seeds_case, tmp_path / "o")) == 2
    line = one_error_line(capsys)
    assert "were both trained with --seed 0" in line and "label0" in line and "label1" in line
    assert not (tmp_path / "o").exists()


def test_runs_of_another_setting_are_refused(seeds_case, tmp_path, capsys):
    run = seeds_case["distil_run"][2] / "run.json"
    run.write_text(json.dumps({"stage": "distillation", "settings": settings(2, lr=0.5)}))
    assert run_script(SCRIPT, *args(seeds_case, tmp_path / "o")) == 2
    line = one_error_line(capsys)
    assert "are not runs of the same setting (--lr 0.02 vs 0.5)" in line and "distil2" in line


def test_the_same_sigma_run_twice_is_refused(seeds_case, tmp_path, capsys):
    label = [seeds_case["label_sigma"][0], seeds_case["label_sigma"][0]]
    assert run_script(SCRIPT, *args(seeds_case, tmp_path / "o", label)) == 2
    assert "are the same sigma run given twice" in one_error_line(capsys)


def test_a_mix_of_grids_is_refused_naming_the_runs(seeds_case, tmp_path, capsys):
    record = seeds_case["distil_sigma"][1] / "run.json"
    meta = json.loads(record.read_text())
    meta["settings"]["grid"] = 4
    record.write_text(json.dumps(meta))
    assert run_script(SCRIPT, *args(seeds_case, tmp_path / "o")) == 2
    line = one_error_line(capsys)
    assert "the sigma runs mix grids" in line and "sigma_distil1: 4" in line


def test_training_runs_must_be_given_one_per_sigma_run(seeds_case, tmp_path, capsys):
    assert run_script(SCRIPT, *args(seeds_case, tmp_path / "o"), "--label-run", seeds_case["label_run"][0]) == 2
    assert "--label-run: 1 training run(s) for 3 sigma run(s)" in one_error_line(capsys)


def test_runs_whose_effective_images_differ_are_measured_on_their_own(seeds_case, tmp_path):
    sigma = seeds_case["distil_sigma"][1]
    (sigma / "effect_name_list.txt").write_text("".join(n + "\n" for n in NAMES[:10]))  # two images non-effective
    out = tmp_path / "report"
    assert run_script(SCRIPT, *args(seeds_case, out)) == 0
    layer = json.loads((out / "metrics.json").read_text())["layers"]["conv"]
    assert layer["bootstrap"]["paired"] is False and "nested" in layer["bootstrap"]["method"]
    assert [r["images"] for r in layer["training_runs"]["distil"]] == [12, 10, 12]
    # by hand: run 2 of the distil net on its first 10 images only
    assert layer["metrics"]["N_fg"]["per_run"]["distil"][1] == pytest.approx(sum(CONCEPTS["distil"][1][:10]) / 10)
    assert any("the runs' effective images differ" in note for note in layer["notes"])
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert sum(r["net"] == "distil" and r["run"] == "2" for r in rows) == 10
