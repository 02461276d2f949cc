"""Verdicts a researcher can trust (docs/method.md §3, "Several training runs" and "Verdicts"): the two-level bootstrap
over training runs and images, the rules that withhold a verdict, the warnings about how the nets trained, and the
settings that are not the paper's.  Expected values are computed by hand in each test (the resampling too)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kdq.function.metrics.analysis import comparison_warnings
from kdq.function.metrics.caveats import not_paper_settings, setting_differences, training_warnings
from kdq.function.metrics.measures import NetInput, compare_runs

HALF = 0.5 * math.log(2 * math.pi * math.e)
N = 12  # images: at least the 10 a verdict needs


def net(fg_concept: np.ndarray, D_at=(0.0, 1.0), allowed=(True, True)) -> NetInput:
    """N images, grid 2, two checkpoints, foreground = cell (0, 0).  Every background cell has H = 0 at both
    checkpoints, so the baseline H̄_bg is 0 in every resample; the foreground cell has H = −1 (a concept: 0 − (−1)
    > b) at the last checkpoint where ``fg_concept`` is 1, else H = 0."""
    H = np.zeros((N, 2, 2, 2))
    H[:, 1, 0, 0] = -np.asarray(fg_concept, dtype=float)
    fg = np.zeros((N, 2, 2), bool)
    fg[:, 0, 0] = True
    return NetInput(H=H, fg=fg, D_at=np.asarray(D_at, float), allowed=np.asarray(allowed, bool))


def rows_of(comp) -> dict[str, dict]:
    return {row["metric"]: row for row in comp.rows}


# per run: which images have a foreground concept at the last checkpoint (so N_fg(run) = its mean)
LABEL_RUNS = np.array([[1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0],
                       [0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0],
                       [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
DISTIL_RUNS = np.array([[1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1],
                        [1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1],
                        [0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1]])


# per run: the cumulative weight distance at its last checkpoint (D = 0 at epoch 0).  An image's m̂ is the last
# checkpoint where it has a concept there, else epoch 0 (the first maximum of 0, 0), so D_mean(run) on images idx is
# D_LAST[run] × (the share of idx with a concept): values fine enough that two different draws cannot agree
D_LAST = {"label": [math.sqrt(2), math.sqrt(3), math.pi / 2], "distil": [math.e / 3, math.sqrt(0.5), 0.61]}


def test_two_level_interval_matches_resampling_by_hand():
    comp = compare_runs([net(a, D_at=(0.0, d)) for a, d in zip(LABEL_RUNS, D_LAST["label"])],
                        [net(a, D_at=(0.0, d)) for a, d in zip(DISTIL_RUNS, D_LAST["distil"])],
                        b=0.2, n_boot=400, seed=3)
    row = rows_of(comp)["N_fg"]
    # by hand: the pooled value is the mean over a net's runs of each run's mean over images
    assert row["label"] == pytest.approx(LABEL_RUNS.mean(axis=1).mean())
    assert row["distil"] == pytest.approx(DISTIL_RUNS.mean(axis=1).mean())
    assert row["per_run"]["label"] == pytest.approx([3 / 12, 3 / 12, 3 / 12])
    assert row["per_run"]["distil"] == pytest.approx([10 / 12, 9 / 12, 9 / 12])
    assert row["spread"]["distil"] == pytest.approx(np.std([10 / 12, 9 / 12, 9 / 12], ddof=1))
    # by hand: per replicate one image draw shared by every run, then 3 label runs, then 3 distil runs
    rng = np.random.default_rng(3)
    diffs, d_diffs = [], []
    for _ in range(400):
        idx = rng.integers(0, N, size=N)
        label_runs = rng.integers(0, 3, size=3)
        distil_runs = rng.integers(0, 3, size=3)
        diffs.append(np.mean([DISTIL_RUNS[r][idx].mean() for r in distil_runs])
                     - np.mean([LABEL_RUNS[r][idx].mean() for r in label_runs]))
        d_diffs.append(np.mean([D_LAST["distil"][r] * DISTIL_RUNS[r][idx].mean() for r in distil_runs])
                       - np.mean([D_LAST["label"][r] * LABEL_RUNS[r][idx].mean() for r in label_runs]))
    assert row["difference_ci"] == pytest.approx(list(np.percentile(diffs, [2.5, 97.5])))
    assert row["verdict"] == "supported" and row["no_verdict"] is None
    d_row = rows_of(comp)["D_mean"]
    assert d_row["label"] == pytest.approx(np.mean([d * a.mean() for d, a in zip(D_LAST["label"], LABEL_RUNS)]))
    assert d_row["difference_ci"] == pytest.approx(list(np.percentile(d_diffs, [2.5, 97.5])), rel=1e-9)
    assert comp.n_runs == {"label": 3, "distil": 3}


def test_one_run_per_net_is_the_paired_image_bootstrap():
    comp = compare_runs([net(LABEL_RUNS[0])], [net(DISTIL_RUNS[0])], b=0.2, n_boot=300, seed=5)
    rng = np.random.default_rng(5)
    diffs = []
    for _ in range(300):  # one image draw per replicate, nothing else drawn
        idx = rng.integers(0, N, size=N)
        diffs.append(DISTIL_RUNS[0][idx].mean() - LABEL_RUNS[0][idx].mean())
    row = rows_of(comp)["N_fg"]
    assert row["difference_ci"] == pytest.approx(list(np.percentile(diffs, [2.5, 97.5])))
    assert "per_run" not in row


def test_zero_width_interval_gets_no_verdict():
    # every image: no concept in the label net, one in the distil net, so every resample gives exactly +1
    comp = compare_runs([net(np.zeros(N))], [net(np.ones(N))], b=0.2, n_boot=100, seed=0)
    row = rows_of(comp)["N_fg"]
    assert row["difference"] == 1 and row["difference_ci"] == [1.0, 1.0]
    assert row["verdict"] is None
    assert row["no_verdict"] == "every resample gives the same difference: a zero-width interval"


def test_nan_estimate_gets_no_verdict_and_no_interval():
    comp = compare_runs([net(LABEL_RUNS[0], D_at=(0.0, float("nan")))], [net(DISTIL_RUNS[0])], 0.2, 50, 0)
    row = rows_of(comp)["D_mean"]
    assert math.isnan(row["label"]) and math.isnan(row["difference"])
    assert row["verdict"] is None and row["no_verdict"] == "the estimate is not a number (NaN/inf)"
    assert all(math.isnan(v) for v in row["difference_ci"])  # no finite interval beside a NaN estimate


def test_mhat_fixed_by_the_schedule_gets_no_verdict_and_exact_zero_spread():
    # two checkpoints, epoch 0 left out: m̂ can only be the last, so D is 0.0003125 for every image
    one = dict(D_at=(0.0, 0.0003125), allowed=(False, True))
    comp = compare_runs([net(LABEL_RUNS[0], **one)], [net(DISTIL_RUNS[0], D_at=(0.0, 0.0005), allowed=(False, True))],
                        0.2, 50, 0)
    rows = rows_of(comp)
    for key in ("D_mean", "D_std"):
        assert rows[key]["verdict"] is None
        assert rows[key]["no_verdict"] == "fixed by the checkpoint schedule: m̂ has a single checkpoint to pick"
    assert rows["D_std"]["label"] == 0.0 and rows["D_var"]["label"] == 0.0  # not 1.7e-18
    assert rows["D_mean"]["label"] == 0.0003125  # exactly: the mean of identical values is that value
    assert rows["N_fg"]["verdict"] is not None  # the concept counts do not depend on m̂


def test_fewer_than_ten_images_no_verdict_at_all():
    small = [NetInput(x.H[:9], x.fg[:9], x.D_at, x.allowed) for x in (net(LABEL_RUNS[0]), net(DISTIL_RUNS[0]))]
    comp = compare_runs([small[0]], [small[1]], 0.2, 50, 0)
    assert all(r["verdict"] is None for r in comp.rows)
    assert {r["no_verdict"] for r in comp.rows if r["predicted"]} == {"only 9 images (fewer than 10)"}
    assert "only 9 images enter the comparison (fewer than 10): no verdict is given" in comparison_warnings(comp)


def test_no_foreground_concept_at_the_last_checkpoint_warns():
    label = net(np.zeros(N))
    label.H[:, 0, 0, 0] = -1.0  # concepts at checkpoint 0 only: "any checkpoint" holds, the last does not
    comp = compare_runs([label], [net(DISTIL_RUNS[0])], 0.2, 20, 0)
    warnings = comparison_warnings(comp)
    assert any(w.startswith("the label net has no foreground concept at the last checkpoint") for w in warnings)
    assert not any(w.startswith("the distil net") for w in warnings)


# ---- how the nets trained ------------------------------------------------------------------------------

def write_run(folder, record, log=None):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(record))
    if log is not None:
        (folder / "distill_log.json").write_text(json.dumps(log))
    return folder


def records(folder):
    """{run folder: its run.json}, as the metrics stage hands training runs to training_warnings."""
    return {folder: json.loads((folder / "run.json").read_text())}


CLASSES = [f"c{i}" for i in range(8)]  # chance: 12.5 %


def test_chance_teacher_diverged_distillation_and_weak_student_warn(tmp_path):
    teacher = write_run(tmp_path / "teacher", {"stage": "train_net", "classes": CLASSES, "final": {"val_acc1": 14.0}})
    label = write_run(tmp_path / "label", {"stage": "train_net", "classes": CLASSES, "final": {"val_acc1": 90.0}})
    distil = write_run(tmp_path / "distil", {
        "stage": "distillation", "classes": CLASSES, "final_val_acc1": 60.0,
        "teacher": {"checkpoint": str(teacher / "20.pth.tar")}},
        log=[{"epoch": 1, "val_mse": 41.0}, {"epoch": 2, "val_mse": 353.0}, {"epoch": 3, "val_mse": 3624.0}])
    warnings = training_warnings(records(label), records(distil))
    assert any("teacher" in w and "14.0 % against a chance level of 12.5 %" in w for w in warnings), warnings
    assert any("diverged" in w and "rose from 41 (epoch 1) to 3624 (epoch 3)" in w for w in warnings), warnings
    assert any("far weaker" in w and "60.0 %" in w and "90.0 %" in w for w in warnings), warnings


def test_a_healthy_teacher_and_distillation_give_no_warning(tmp_path):
    teacher = write_run(tmp_path / "teacher", {"stage": "train_net", "classes": CLASSES, "final": {"val_acc1": 97.0}})
    label = write_run(tmp_path / "label", {"stage": "train_net", "classes": CLASSES, "final": {"val_acc1": 90.0}})
    distil = write_run(tmp_path / "distil", {
        "stage": "distillation", "classes": CLASSES, "final_val_acc1": 88.0,
        "teacher": {"checkpoint": str(teacher / "20.pth.tar")}},
        log=[{"epoch": 1, "val_mse": 3.0}, {"epoch": 2, "val_mse": 1.0}])
    assert training_warnings(records(label), records(distil)) == []


# ---- settings that are not the paper's ---------------------------------------------------------------

def test_sigma_settings_that_are_not_the_papers_are_listed():
    record = {"stage": "train_sigma", "model": {"arch": "vgg16", "family": "vgg"},
              "settings": {"effective_rule": "off", "samples": 8, "steps": 12, "lr": 1e-4, "grid": 16,
                           "lam": 7.0, "device": "cuda", "out": "x", "seed": 3}}
    diffs = setting_differences(record)
    assert "--effective-rule off (paper: on)" in diffs
    assert "--samples 8 (paper: 96)" in diffs and "--steps 12 (paper: 80)" in diffs
    assert not any(d.startswith(("--lr", "--grid", "--lambda", "--device", "--out", "--seed")) for d in diffs), diffs
    resnet = {"stage": "train_sigma", "model": {"family": "resnet"}, "settings": {"lam": 7.0}}
    assert setting_differences(resnet) == ["--lambda 7.0 (paper: 6.0 for resnet)"]


def test_one_seed_and_the_dataset_are_named_and_a_papers_setting_is_clean():
    sigma = {"stage": "train_sigma", "model": {"arch": "vgg16", "family": "vgg"}, "settings": {"samples": 96}}
    train = {"stage": "train_net", "model": {"arch": "vgg16"}, "settings": {"epochs": 150, "lr": 1e-3}}
    items = not_paper_settings({"label": [sigma], "distil": [sigma]}, {"label": [train], "distil": []}, "cub",
                               {"label": 3, "distil": 3})
    assert items == []
    items = not_paper_settings({"label": [sigma], "distil": [sigma]},
                               {"label": [{**train, "settings": {"epochs": 20, "lr": 1e-3}}], "distil": []},
                               "embedded", {"label": 1, "distil": 3})
    assert "label net training: --epochs 20 (paper: 150)" in items
    assert any(i.startswith("dataset: kdq's embedded synthetic dataset") for i in items)
    assert any(i.startswith("one training run of the label net: the intervals cover image sampling only")
               for i in items)


def test_nested_two_level_interval_when_the_runs_images_differ():
    # three label runs on 12, 10 and 11 images, two distil runs on 12 and 9: no shared image draw is possible
    label = [net(LABEL_RUNS[0]), *(NetInput(x.H[:n], x.fg[:n], x.D_at, x.allowed)
                                   for x, n in ((net(LABEL_RUNS[1]), 10), (net(LABEL_RUNS[2]), 11)))]
    d1 = net(DISTIL_RUNS[1])
    distil = [net(DISTIL_RUNS[0]), NetInput(d1.H[:9], d1.fg[:9], d1.D_at, d1.allowed)]
    comp = compare_runs(label, distil, b=0.2, n_boot=300, seed=11, paired=False)
    concept = {"label": [LABEL_RUNS[0], LABEL_RUNS[1][:10], LABEL_RUNS[2][:11]],
               "distil": [DISTIL_RUNS[0], DISTIL_RUNS[1][:9]]}
    # by hand: per replicate, for the label net then the distil net: its runs, then each drawn run's own images
    rng = np.random.default_rng(11)
    diffs = []
    for _ in range(300):
        value = {}
        for side in ("label", "distil"):
            runs = rng.integers(0, len(concept[side]), size=len(concept[side]))
            per = []
            for r in runs:
                a = concept[side][r]
                per.append(a[rng.integers(0, len(a), size=len(a))].mean())
            value[side] = np.mean(per)
        diffs.append(value["distil"] - value["label"])
    row = rows_of(comp)["N_fg"]
    assert row["label"] == pytest.approx(np.mean([a.mean() for a in concept["label"]]))
    assert row["difference_ci"] == pytest.approx(list(np.percentile(diffs, [2.5, 97.5])))
    assert not comp.paired
