"""sigma/find_knowledge_new.py on fabricated sigma and training runs in the docs/method.md §4 layout."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path


import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from tests.helpers import one_error_line, run_script

SCRIPT = "sigma/find_knowledge_new.py"
HALF = 0.5 * math.log(2 * math.pi * math.e)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- fabrication -----------------------------------------------------------------------------------

def write_sigma_run(folder: Path, full: list[str], effect: list[str], sigmas: dict[str, np.ndarray],
                    run_json: dict | None = None) -> Path:
    """A sigma run as the original code writes it: name lists and img_<i>_effect/npy_files/*.npy."""
    folder.mkdir(parents=True)
    (folder / "full_name_list.txt").write_text("".join(n + "\n" for n in full))
    (folder / "effect_name_list.txt").write_text("".join(n + "\n" for n in effect))
    (folder / "non_effect_name_list.txt").write_text("".join(n + "\n" for n in full if n not in effect))
    for name, sigma in sigmas.items():
        d = folder / f"img_{full.index(name)}_effect" / "npy_files"
        d.mkdir(parents=True)
        K = sigma.shape[0]
        np.save(d / "best_sigma_entropy.npy", sigma[:, None].astype(np.float32))  # (K, 1, g, g)
        np.save(d / "entropy.npy", np.zeros((K, 1, 5), np.float32))
        np.save(d / "feature_loss.npy", np.zeros((K, 1, 5), np.float32))
        np.save(d / "penalty_loss.npy", np.zeros((K, 1, 5), np.float32))
        np.save(d / "sigma_f_matrix.npy", np.ones((K, 1), np.float32))
    if run_json is not None:
        (folder / "run.json").write_text(json.dumps(run_json))
    return folder


def write_training_run(folder: Path, weight_diff: np.ndarray, run_json: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    np.save(folder / "weight_diff.npy", np.asarray(weight_diff, dtype=np.float64))
    if run_json is not None:
        (folder / "run.json").write_text(json.dumps(run_json))
    return folder


def sigma_of(H: np.ndarray) -> np.ndarray:
    """σ whose entropy log σ + ½log 2πe is H."""
    return np.exp(np.asarray(H, dtype=np.float64) - HALF)



# ---- the hand-computed case ------------------------------------------------------------------------
# Three images, 8x8 px, grid 2x2 (cells c0 c1 / c2 c3), S = 8, checkpoints 0 5 10, b = 0.2.
# Foreground: A = {c0}, B = {c0, c1}, C = {c0, c2}.

FG = {"cls/A.png": [[1, 0], [0, 0]], "cls/B.png": [[1, 1], [0, 0]], "cls/C.png": [[1, 0], [1, 0]],
      "cls/D.png": [[1, 0], [0, 0]], "cls/E.png": [[0, 1], [0, 0]]}
Z = [[0.0, 0.0], [0.0, 0.0]]
LABEL_H = {  # per image: H at epochs 0, 5, 10
    "cls/A.png": [Z, [[-1, 0], [0, 0]], [[-1, -1], [0.5, 0.5]]],
    "cls/B.png": [Z, [[-1, 0], [0.3, -0.3]], [[-1, -1], [0, 0]]],
    "cls/C.png": [Z, [[0, -1], [0.5, 0.5]], [[-1, 0], [-1, 0]]],
    "cls/D.png": [Z, Z, Z],
}
DISTIL_H = {
    "cls/A.png": [Z, [[-1, 0], [0, 0]], [[-1, 0], [0, 0]]],
    "cls/B.png": [Z, [[-1, -1], [0, 0]], [[-1, -1], [0, 0]]],
    "cls/C.png": [Z, [[-1, 0], [-1, 0]], [[-1, 0], [-1, 0]]],
    "cls/D.png": [Z, Z, Z],
    "cls/E.png": [Z, Z, Z],
}
# By hand (see the comments in test_hand_computed_numbers):
EXPECTED = {
    "label": {"N_fg": 5 / 3, "N_bg": 1 / 3, "lambda": 2.5 / 3, "D_mean": 35 / 3, "D_std": math.sqrt(200 / 9),
              "D_var": 200 / 9, "rho": 1.0, "rho_bg": 1 / 3, "rho_total": 7 / 9,
              "slope": 7 / 45, "D_mean_bg": 25 / 3, "D_var_bg": 200 / 9, "slope_bg": 7 / 45},
    "distil": {"N_fg": 5 / 3, "N_bg": 0.0, "lambda": 1.0, "D_mean": 2.5, "D_std": 0.0, "D_var": 0.0,
               "rho": 1.0, "rho_bg": 0.0, "rho_total": 1.0, "slope": 2 / 3, "D_mean_bg": 0.0, "D_var_bg": 0.0,
               "slope_bg": None},  # no background concept anywhere: every m̂_bg is epoch 0, D = 0, left out
}


@pytest.fixture()
def hand_case(tmp_path):
    """Original-code layout (no run.json): dataset, two sigma runs, two training runs."""
    data = tmp_path / "data"
    for name, fg in FG.items():
        img = data / "train" / name
        seg = data / "seg" / "train" / name
        img.parent.mkdir(parents=True, exist_ok=True)
        seg.parent.mkdir(parents=True, exist_ok=True)
        rgb = np.random.default_rng(len(name)).integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(img)
        Image.fromarray((np.kron(np.array(fg), np.ones((4, 4))) * 255).astype(np.uint8)).save(seg)
    label_sigma_arrays = {n: sigma_of(h) for n, h in LABEL_H.items()}
    distil_sigma_arrays = {n: sigma_of(h) for n, h in DISTIL_H.items()}
    distil_sigma_arrays["cls/D.png"][2, 0, 1] = np.nan  # D: NaN in the distil run → skipped and counted
    # the two runs list their images in different orders, so img_<i> differ between them
    label = write_sigma_run(tmp_path / "sigma_label", ["cls/D.png", "cls/C.png", "cls/B.png", "cls/A.png", "cls/E.png"],
                            ["cls/A.png", "cls/B.png", "cls/C.png", "cls/D.png"], label_sigma_arrays)
    distil = write_sigma_run(tmp_path / "sigma_distil", sorted(FG),
                             ["cls/E.png", "cls/A.png", "cls/B.png", "cls/C.png", "cls/D.png"], distil_sigma_arrays)
    wd_label = np.zeros((4, 11))
    wd_label[0, 1:6], wd_label[0, 6:] = 1.0, 2.0  # conv: D(0)=0, D(5)=5, D(10)=15
    wd_label[1:] = 7.0  # other rows are never read at --layer conv
    wd_distil = np.zeros((4, 11))
    wd_distil[0, 1:6], wd_distil[0, 6:] = 0.5, 1.0  # D(5)=2.5, D(10)=7.5
    return {"data": data, "label_sigma": label, "distil_sigma": distil,
            "label_run": write_training_run(tmp_path / "label", wd_label),
            "distil_run": write_training_run(tmp_path / "distil", wd_distil), "tmp": tmp_path}


def hand_args(c, out, *extra, checkpoints=("0", "5", "10")):
    return ["--label-sigma", c["label_sigma"], "--distil-sigma", c["distil_sigma"], "--label-run", c["label_run"],
            "--distil-run", c["distil_run"], "--data", c["data"], "--split", "train", "--layer", "conv",
            "--image-size", "8", "--bootstrap", "50", "--out", out, "--checkpoints", *checkpoints, *extra]


def test_hand_computed_numbers(hand_case, tmp_path, capsys):
    # Label net. epoch 5: bg means A 0, B (0.3-0.3)/2 = 0, C (-1+0.5)/2 = -0.25 → baseline -1/12; concepts
    #   where H < -1/12 - 0.2: A {c0 fg}, B {c0 fg, c3 bg}, C {c1 bg}.  epoch 10: bg means 0, 0, 0 → H < -0.2:
    #   A {c0 fg, c1 bg}, B {c0, c1 fg}, C {c0, c2 fg}.  epoch 0: nothing.
    #   last: N_fg (1, 2, 2), N_bg (1, 0, 0), λ (1/2, 1, 1).  N_fg over epochs: A (0,1,1) → m̂ = 5, D = 5;
    #   B (0,1,2), C (0,0,2) → m̂ = 10, D = 15.  D_mean 35/3, var ((20/3)²+2(10/3)²)/3 = 200/9.
    #   ρ: A {0}/{0}, B {0,1}/{0,1}, C {0,2}/{0,2} → 1.  ρ_bg: A {1}/{1}=1, B ∅/{3}=0, C ∅/{1}=0 → 1/3.
    #   ρ_total: A 2/2, B 2/3 ({0,1} of {0,1,3}), C 2/3 ({0,2} of {0,1,2}) → 7/9.
    #   slope N_fg(m̂)/D(m̂): A 1/5, B 2/15, C 2/15 → 7/45.  N_bg over epochs: A (0,0,1) → m̂_bg 10, D 15;
    #   B (0,1,0), C (0,1,0) → m̂_bg 5, D 5: D_mean_bg 25/3, D_var_bg ((20/3)² + 2(10/3)²)/3 = 200/9;
    #   slope_bg 1/15, 1/5, 1/5 → 7/45.
    # Distil net: baseline 0 at every epoch; concepts only on the foreground, the same at 5 and 10:
    #   N_fg (1, 2, 2), N_bg 0, λ 1, m̂ = 5 for all (first max), D = 2.5 each, ρ = 1, ρ_bg = 0 (empty), ρ_total 1.
    #   slope 1/2.5, 2/2.5, 2/2.5 → 2/3; N_bg is 0 everywhere: m̂_bg = epoch 0 (first max), D = 0 → slope_bg
    #   left out for every image (None), D_mean_bg = D_var_bg = 0.
    # Image D is effective in both but has NaN in the distil run (skipped, counted); E is effective only in
    # the distil run.
    out = tmp_path / "report"
    assert run_script(SCRIPT, *hand_args(hand_case, out, "--no-figures")) == 0
    printed = capsys.readouterr()
    assert "leaving out cls/D.png: σ* is distil: non-finite" in printed.err
    res = json.loads((out / "metrics.json").read_text())
    layer = res["layers"]["conv"]
    for net in ("label", "distil"):
        assert layer["per_image"][net]["names"] == ["cls/A.png", "cls/B.png", "cls/C.png"]
    images = layer["images"]
    assert images["both"] == 4 and images["used_label"] == images["used_distil"] == 3 and images["skipped"] == 1
    assert images["skipped_images"] == {"cls/D.png": "distil: non-finite"}
    assert layer["checkpoints"] == {"label": [0, 5, 10], "distil": [0, 5, 10]}
    assert layer["checkpoints_source"] == {"label": "--checkpoints", "distil": "--checkpoints"}
    assert layer["grid"] == 2 and layer["image_size"] == 8 and layer["compat"] == "kdq"
    for net, expected in EXPECTED.items():
        for key, value in expected.items():
            got = layer["metrics"][key][net]
            assert got is None if value is None else got == pytest.approx(value, abs=1e-9), (net, key, got)
    assert layer["per_image"]["label"]["mhat_epoch"] == [5, 10, 10]
    assert layer["per_image"]["distil"]["mhat_epoch"] == [5, 5, 5]
    assert layer["per_image"]["label"]["mhat_bg_epoch"] == [10, 5, 5]
    assert layer["curves"]["label"]["baseline"] == pytest.approx([0.0, -1 / 12, 0.0], abs=1e-6)  # σ* is float32
    m = layer["metrics"]
    assert m["N_bg"]["difference"] == pytest.approx(-1 / 3) and m["N_bg"]["holds"] is True
    assert m["N_fg"]["holds"] is False  # equal: the predicted increase does not hold
    assert m["D_mean"]["holds"] is True and m["lambda"]["holds"] is True
    assert m["rho_bg"]["holds"] is None and m["rho_bg"]["verdict"] is None
    # 3 images are fewer than 10: no predicted metric gets a verdict, each row says why (the interval is still shown)
    for key in ("N_fg", "N_bg", "lambda", "D_mean", "D_std", "rho"):
        assert m[key]["verdict"] is None and m[key]["no_verdict"] == "only 3 images (fewer than 10)", key
    assert m["D_mean"]["difference_ci"][1] < 0  # every resample of the 3 images gives distil < label
    # csv: one row per image × net (one training run each: run 1)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 6 and {r["net"] for r in rows} == {"label", "distil"} and {r["run"] for r in rows} == {"1"}
    b_label = next(r for r in rows if r["net"] == "label" and r["image"] == "cls/B.png")
    assert b_label["N_fg"] == "2" and b_label["mhat_epoch"] == "10" and float(b_label["D"]) == 15.0
    # terminal table: aligned, every metric
    table = printed.out.split("\n\n")[0].splitlines()
    assert table[0].startswith("layer") and set(table[1]) <= {"-", " "}
    assert len({len(line) for line in table[:2]}) == 1
    for key in ("N_fg", "N_bg", "lambda", "D_mean", "D_std", "rho", "D_var", "rho_bg", "rho_total", "slope",
                "D_mean_bg", "D_var_bg", "slope_bg"):
        assert any(line.split()[1] == key for line in table[2:])


def test_report_and_figures_are_written(hand_case, tmp_path):
    out = tmp_path / "report"
    assert run_script(SCRIPT, *hand_args(hand_case, out)) == 0
    report = (out / "report.md").read_text()
    assert report.index("| layer | metric |") < report.index("## Images and settings") < report.index("## Figures")
    for key in ("entropy_maps", "concept_curves", "weight_distance", "metric_panels"):
        png = out / "figures" / f"conv_{key}.png"
        assert png.is_file() and png.stat().st_size > 5000 and png.read_bytes()[:8] == PNG_MAGIC
        assert f"(figures/conv_{key}.png)" in report
    assert report.count("*Figure ") == 4
    meta = json.loads((out / "metrics.json").read_text())
    assert {"python", "numpy", "torch", "matplotlib"} <= set(meta["versions"])
    assert meta["settings"]["b"] == 0.2 and meta["layers"]["conv"]["inputs"]["--label-sigma"]
    assert not list(out.rglob("*.tmp"))


def test_existing_report_is_not_overwritten(hand_case, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_script(SCRIPT, *hand_args(hand_case, out, "--no-figures")) == 0
    before = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert run_script(SCRIPT, *hand_args(hand_case, out, "--b", "0.1")) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert (out / "metrics.json").read_text() == before
    assert run_script(SCRIPT, *hand_args(hand_case, out, "--b", "0.1", "--overwrite", "--no-figures")) == 0
    assert json.loads((out / "metrics.json").read_text())["settings"]["b"] == 0.1
    capsys.readouterr()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run_script(SCRIPT, *hand_args(hand_case, other, "--overwrite")) == 2
    assert "not a kdq run" in one_error_line(capsys) and (other / "notes.txt").is_file()


# ---- bad inputs ------------------------------------------------------------------------------------

def test_different_grids_are_refused(hand_case, tmp_path, capsys):
    d = hand_case["distil_sigma"]
    for f in d.rglob("best_sigma_entropy.npy"):
        np.save(f, np.ones((3, 1, 4, 4), np.float32))
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o")) == 2
    line = one_error_line(capsys)
    assert "different grids" in line and "2x2" in line and "4x4" in line
    assert not (tmp_path / "o").exists()


def test_each_net_uses_its_own_checkpoint_schedule(hand_case, tmp_path, capsys):
    (hand_case["label_sigma"] / "run.json").write_text(json.dumps({"settings": {"checkpoints": [0, 5, 10]}}))
    (hand_case["distil_sigma"] / "run.json").write_text(json.dumps({"checkpoints": [0, 4, 10]}))
    out = tmp_path / "o"
    assert run_script(SCRIPT, *hand_args(hand_case, out, checkpoints=())[:-1], "--no-figures") == 0
    layer = json.loads((out / "metrics.json").read_text())["layers"]["conv"]
    assert layer["checkpoints"] == {"label": [0, 5, 10], "distil": [0, 4, 10]}
    # the distil net peaks at its second checkpoint, epoch 4: D(4) = 4 × 0.5 = 2 for every image
    assert layer["per_image"]["distil"]["mhat_epoch"] == [4, 4, 4]
    assert layer["metrics"]["D_mean"]["distil"] == pytest.approx(2.0)
    assert layer["metrics"]["D_mean"]["label"] == pytest.approx(35 / 3)  # unchanged
    # schedules of different lengths: one per net on the command line
    (hand_case["distil_sigma"] / "run.json").unlink()
    (hand_case["label_sigma"] / "run.json").unlink()
    for f in hand_case["distil_sigma"].rglob("best_sigma_entropy.npy"):
        np.save(f, np.concatenate([np.load(f)[:1], np.load(f)]))  # 4 entries: epochs 0 0 5 10 → say 0 2 5 10
    capsys.readouterr()
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o2")) == 2
    assert "hold 4 checkpoints but the epochs given are 3" in one_error_line(capsys)
    args = hand_args(hand_case, tmp_path / "o3", checkpoints=())[:-1]
    assert run_script(SCRIPT, *args, "--no-figures", "--label-checkpoints", 0, 5, 10,
                      "--distil-checkpoints", 0, 2, 5, 10) == 0
    layer = json.loads((tmp_path / "o3" / "metrics.json").read_text())["layers"]["conv"]
    assert layer["checkpoints"]["distil"] == [0, 2, 5, 10]
    assert len(layer["curves"]["distil"]["n_fg_mean"]) == 4 and len(layer["curves"]["label"]["n_fg_mean"]) == 3


def test_no_common_effective_image_is_refused(hand_case, tmp_path, capsys):
    (hand_case["distil_sigma"] / "effect_name_list.txt").write_text("cls/E.png\n")
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o")) == 2
    assert "no image is effective in both" in one_error_line(capsys)


def test_short_weight_diff_is_refused(hand_case, tmp_path, capsys):
    np.save(hand_case["distil_run"] / "weight_diff.npy", np.zeros((4, 8)))
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o")) == 2
    line = one_error_line(capsys)
    assert "--distil-run" in line and "covers epochs 0..7" in line and "10" in line


def test_missing_mask_is_refused_or_replaced(hand_case, tmp_path, capsys):
    (hand_case["data"] / "seg" / "train" / "cls" / "B.png").unlink()
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o")) == 2
    assert "missing mask" in one_error_line(capsys)
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o2", "--missing-mask", "central",
                                         "--no-figures")) == 0
    layer = json.loads((tmp_path / "o2" / "metrics.json").read_text())["layers"]["conv"]
    assert layer["images"]["central_square_masks"] == ["cls/B.png"]


def test_central_foreground_recorded_by_the_sigma_run(hand_case, tmp_path):
    for run in ("label_sigma", "distil_sigma"):
        (hand_case[run] / "run.json").write_text(json.dumps({"settings": {"foreground": "central", "grid": 2}}))
    out = tmp_path / "o"
    assert run_script(SCRIPT, *hand_args(hand_case, out, "--show-images", "1", "--max-columns", "2")) == 0
    L = json.loads((out / "metrics.json").read_text())["layers"]["conv"]
    assert L["foreground"]["foreground"] == "central"
    # g = 2: the central square, rows and columns int(2/6)..int(10/6) = 0..1, covers every cell → no background
    # cell, the baseline is undefined (NaN → null) and no cell is a concept
    assert L["curves"]["label"]["baseline"] == [None, None, None]
    assert L["metrics"]["N_fg"]["label"] == 0 and L["metrics"]["N_bg"]["distil"] == 0
    assert (out / "figures" / "conv_entropy_maps.png").stat().st_size > 0


def test_pickled_sigma_file_is_refused(hand_case, tmp_path, capsys):
    f = next(hand_case["label_sigma"].rglob("best_sigma_entropy.npy"))
    np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o")) == 2
    assert "holds object values; expected real numbers" in one_error_line(capsys)


def test_all_images_unusable_is_refused(hand_case, tmp_path, capsys):
    for f in hand_case["label_sigma"].rglob("best_sigma_entropy.npy"):
        np.save(f, -np.ones((3, 1, 2, 2), np.float32))
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o")) == 2
    assert "usable" in one_error_line(capsys)


def test_checkpoints_needed_without_run_json(hand_case, tmp_path, capsys):
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o", checkpoints=())[:-1]) == 2
    assert "--checkpoints" in one_error_line(capsys)


def test_help_documents_the_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        run_script(SCRIPT, "--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--label-sigma", "--distil-sigma", "--label-run", "--distil-run", "--data", "--split", "--layer",
                 "--out", "--checkpoints", "--grid", "--b", "--seed", "--bootstrap", "--overwrite", "--debug"):
        assert flag in text
    assert "<label-sigma>/{conv,fc1,fc2,fc3}" in text


# ---- kdq layout on the embedded dataset, against an independent computation ------------------------

def independent(H: dict[str, np.ndarray], fg: dict[str, np.ndarray], names, D_at, b, skip0=False):
    """docs/method.md §3 written out with loops, independent of function/metrics/measures.py."""
    K = len(D_at)
    base = []
    for k in range(K):
        per = []
        for n in names:
            bg = [H[n][k][r][c] for r in range(fg[n].shape[0]) for c in range(fg[n].shape[1]) if not fg[n][r][c]]
            per.append(sum(bg) / len(bg))
        base.append(sum(per) / len(per))
    out = {"N_fg": [], "N_bg": [], "lambda": [], "D": [], "rho": []}
    for n in names:
        g = fg[n].shape[0]
        concept = [{(r, c) for r in range(g) for c in range(g) if base[k] - H[n][k][r][c] > b} for k in range(K)]
        fgs = [{rc for rc in s if fg[n][rc]} for s in concept]
        nf = [len(s) for s in fgs]
        nb = [len(concept[k]) - nf[k] for k in range(K)]
        out["N_fg"].append(nf[-1])
        out["N_bg"].append(nb[-1])
        out["lambda"].append(nf[-1] / (nf[-1] + nb[-1]) if nf[-1] + nb[-1] else 0.0)
        ks = [k for k in range(K) if not (skip0 and k == 0)]
        best = max(nf[k] for k in ks)
        out["D"].append(D_at[next(k for k in ks if nf[k] == best)])
        union = set().union(*fgs)
        out["rho"].append(len(fgs[-1]) / len(union) if union else 0.0)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    D_mean = mean(out["D"])
    return {"N_fg": mean(out["N_fg"]), "N_bg": mean(out["N_bg"]), "lambda": mean(out["lambda"]), "D_mean": D_mean,
            "D_std": math.sqrt(mean([(d - D_mean) ** 2 for d in out["D"]])), "rho": mean(out["rho"])}


def grid_mask(mask_png: Path, S: int, g: int) -> np.ndarray:
    """The original code's foreground cells, through its own calls: transforms.Resize((S, S)) of the grey mask,
    ToTensor, F.interpolate(size=g, mode='nearest'), > 0."""
    seg = T.Compose([T.Resize((S, S)), T.ToTensor()])(Image.open(mask_png).convert("L")).squeeze()
    return (F.interpolate(seg[None, None].float(), size=g, mode="nearest").squeeze() > 0).numpy()


@pytest.fixture()
def kdq_case(tiny_data, tmp_path):
    """Sigma runs with run.json (kdq layout) for layers conv and fc1 on the embedded dataset (vgg_tiny, S=64)."""
    names = sorted(str(p.relative_to(tiny_data / "train")) for p in (tiny_data / "train").rglob("*.png"))
    rng = np.random.default_rng(11)
    K, g, epochs = 4, 4, [0, 1, 2, 4]
    H = {}
    for net in ("label", "distil"):
        for layer in ("conv", "fc1"):
            base = rng.normal(-3.0, 0.25, (len(names), K, g, g))
            H[net, layer] = {n: base[i] for i, n in enumerate(names)}
            effect = names[1:] if net == "label" else names[:-1]
            write_sigma_run(tmp_path / f"sigma_{net}" / layer, names, effect,
                            {n: sigma_of(H[net, layer][n]) for n in effect},
                            {"stage": "train_sigma", "checkpoints": epochs, "settings": {
                                "grid": g, "arch": "vgg_tiny", "layer": layer, "checkpoints": ["paper"],
                                "checkpoint_root": str(tmp_path / net / (layer if net == "distil" else ""))}})
    wd = {"label": rng.uniform(0.1, 1, (4, 5)), "distil": rng.uniform(0.1, 1, (4, 5))}
    for v in wd.values():
        v[:, 0] = 0
    write_training_run(tmp_path / "label", wd["label"], {"settings": {"arch": "vgg_tiny"}})
    for layer in ("conv", "fc1"):  # one feature-distilled net per layer
        write_training_run(tmp_path / "distil" / layer, wd["distil"] * (2 if layer == "fc1" else 1))
    fg = {n: grid_mask(tiny_data / "seg" / "train" / n, 64, g) for n in names}
    return {"names": names, "H": H, "wd": wd, "fg": fg, "epochs": epochs, "data": tiny_data, "tmp": tmp_path}


def kdq_args(c, out, layer, *extra):
    t = c["tmp"]
    return ["--label-sigma", t / "sigma_label", "--distil-sigma", t / "sigma_distil", "--label-run", t / "label",
            "--distil-run", t / "distil", "--data", c["data"], "--layer", layer, "--bootstrap", "30",
            "--out", out, *extra]


def test_kdq_layout_matches_an_independent_computation(kdq_case, tmp_path, capsys):
    c = kdq_case
    out = tmp_path / "all"
    assert run_script(SCRIPT, *kdq_args(c, out, "all", "--show-images", "1", "--max-columns", "3")) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert set(res["layers"]) == {"conv", "fc1"}
    names = c["names"][1:-1]  # effective in both
    for layer, row in (("conv", 0), ("fc1", 1)):
        L = res["layers"][layer]
        assert L["per_image"]["label"]["names"] == names and L["image_size"] == 64
        assert L["checkpoints_source"] == {"label": "run.json", "distil": "run.json"}
        assert not L["mhat_skips_epoch0"]  # vgg_tiny is not a ResNet
        for net in ("label", "distil"):
            wd = c["wd"][net][row] * (2 if (net, layer) == ("distil", "fc1") else 1)
            D_at = [float(np.cumsum(wd)[e]) for e in c["epochs"]]
            want = independent(c["H"][net, layer], c["fg"], names, D_at, 0.2)
            for key, value in want.items():
                assert L["metrics"][key][net] == pytest.approx(value, rel=1e-6, abs=1e-9), (layer, net, key)
    table = capsys.readouterr().out
    assert "conv" in table and "fc1" in table
    assert len(list((out / "figures").glob("*.png"))) == 8
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 * 2 * len(names)


def test_resnet_rule_and_layer_from_subfolder(kdq_case, tmp_path):
    c = kdq_case
    out = tmp_path / "conv"
    # --arch resnet_tiny: the m̂ rule defaults to leaving epoch 0 out; --layer conv finds <dir>/conv
    assert run_script(SCRIPT, *kdq_args(c, out, "conv", "--arch", "resnet_tiny", "--no-figures")) == 0
    L = json.loads((out / "metrics.json").read_text())["layers"]["conv"]
    assert L["mhat_skips_epoch0"] and 0 not in L["per_image"]["label"]["mhat_epoch"]
    names = c["names"][1:-1]
    D_at = [float(np.cumsum(c["wd"]["label"][0])[e]) for e in c["epochs"]]
    want = independent(c["H"]["label", "conv"], c["fg"], names, D_at, 0.2, skip0=True)
    assert L["metrics"]["D_mean"]["label"] == pytest.approx(want["D_mean"])


def test_layer_and_training_runs_default_to_what_the_sigma_run_records(kdq_case, tmp_path):
    t = kdq_case["tmp"]
    out = tmp_path / "o"
    assert run_script(SCRIPT, "--label-sigma", t / "sigma_label" / "fc1", "--distil-sigma", t / "sigma_distil" / "fc1",
                      "--data", kdq_case["data"], "--bootstrap", "5", "--no-figures", "--out", out) == 0
    L = json.loads((out / "metrics.json").read_text())["layers"]["fc1"]
    assert Path(L["inputs"]["--distil-run"]) == t / "distil" / "fc1"
    D_at = [float(np.cumsum(kdq_case["wd"]["distil"][1] * 2)[e]) for e in kdq_case["epochs"]]
    want = independent(kdq_case["H"]["distil", "fc1"], kdq_case["fg"], kdq_case["names"][1:-1], D_at, 0.2)
    assert L["metrics"]["D_mean"]["distil"] == pytest.approx(want["D_mean"])


def test_recorded_layer_must_match(kdq_case, tmp_path, capsys):
    t = kdq_case["tmp"]
    args = kdq_args(kdq_case, tmp_path / "o", "fc1")
    args[args.index(t / "sigma_label")] = t / "sigma_label" / "conv"
    assert run_script(SCRIPT, *args) == 2
    assert "fitted at layer conv" in one_error_line(capsys)


def test_bootstrap_in_the_script_is_seeded(kdq_case, tmp_path):
    outs = [tmp_path / f"r{i}" for i in range(3)]
    for out, seed in zip(outs, ("1", "1", "2")):
        assert run_script(SCRIPT, *kdq_args(kdq_case, out, "conv", "--seed", seed, "--no-figures")) == 0
    m = [json.loads((o / "metrics.json").read_text())["layers"]["conv"]["metrics"] for o in outs]
    assert m[0] == m[1]
    assert any(m[0][k]["difference_ci"] != m[2][k]["difference_ci"] for k in m[0])
    assert all(m[0][k]["difference"] == m[2][k]["difference"] for k in m[0])  # the point does not depend on it
    for key in ("N_fg", "N_bg", "lambda", "D_mean", "rho"):  # means: the percentile interval holds the point
        lo, hi = m[0][key]["difference_ci"]
        assert lo - 1e-12 <= m[0][key]["difference"] <= hi + 1e-12


# ---- --compat original: the original's printed figures -----------------------------------------------

def test_compat_original_by_hand(hand_case, tmp_path):
    """The hand case as a ResNet (epoch 0 left out of m̂), with image D a failed fit (σ* = 0) in the distil run only.

    kdq: D is left out of both nets; D is read at m̂.  Original: the label net keeps D (its per-net filter), and D
    is read one checkpoint before m̂ (its off-by-one).  By hand, label net with D (H = 0 everywhere, bg mean 0):
    epoch-5 baseline (0 + 0 − 0.25 + 0)/4 = −1/16, the same concept cells as before; N_fg last (1, 2, 2, 0) → 5/4,
    N_bg (1, 0, 0, 0) → 1/4, λ (½, 1, 1, 0) → 5/8, ρ (1, 1, 1, 0) → 3/4.  m̂ among epochs 5, 10: A 5, B 10, C 10, D 5
    (all 0: first); read one checkpoint earlier: D(0) = 0, D(5) = 5, D(5) = 5, D(0) = 0 → D_mean 2.5, D_var 6.25;
    slopes 1/0 = inf, 2/5, 2/5, 0/0 = NaN → mean NaN.  Distil net (A, B, C): m̂ = 5 → read at 0: D = 0, slopes inf.
    """
    f = next(p for p in hand_case["distil_sigma"].rglob("best_sigma_entropy.npy")
             if "img_3_" in str(p))  # distil full list is sorted: img_3 is cls/D.png
    arr = np.load(f)
    arr[1] = 0.0  # a failed fit at one checkpoint (σ* ≤ 0), no NaN anywhere
    np.save(f, arr)
    kdq, orig = tmp_path / "kdq", tmp_path / "orig"
    common = ("--no-figures", "--mhat-skip-epoch0", "yes")
    assert run_script(SCRIPT, *hand_args(hand_case, kdq, *common)) == 0
    assert run_script(SCRIPT, *hand_args(hand_case, orig, *common, "--compat", "original")) == 0
    K = json.loads((kdq / "metrics.json").read_text())["layers"]["conv"]
    O = json.loads((orig / "metrics.json").read_text())["layers"]["conv"]
    assert K["compat"] == "kdq" and O["compat"] == "original"
    assert K["per_image"]["label"]["names"] == K["per_image"]["distil"]["names"] == ["cls/A.png", "cls/B.png",
                                                                                     "cls/C.png"]
    assert K["metrics"]["D_mean"]["label"] == pytest.approx(35 / 3) and K["metrics"]["D_mean"]["distil"] == 2.5
    assert K["metrics"]["slope"]["label"] == pytest.approx(7 / 45) and K["bootstrap"]["paired"]
    assert O["per_image"]["label"]["names"] == ["cls/A.png", "cls/B.png", "cls/C.png", "cls/D.png"]
    assert O["per_image"]["distil"]["names"] == ["cls/A.png", "cls/B.png", "cls/C.png"] and not O["bootstrap"]["paired"]
    m = O["metrics"]
    expected = {"N_fg": 5 / 4, "N_bg": 1 / 4, "lambda": 5 / 8, "rho": 3 / 4, "D_mean": 2.5, "D_var": 6.25}
    for key, value in expected.items():
        assert m[key]["label"] == pytest.approx(value), key
    assert m["D_mean"]["distil"] == 0.0 and m["slope"]["label"] is None and m["slope"]["distil"] is None  # NaN, inf
    rows = [r for r in csv.DictReader((orig / "metrics.csv").open())]
    assert [r["slope"] for r in rows if r["net"] == "distil"] == ["inf", "inf", "inf"]
    assert "original code's arithmetic" in (orig / "report.md").read_text()


def original_figures(effect_label: list[str], effect_distil: list[str], sigma_of_name, checkpoints: list[int],
                     wd_row: np.ndarray, fg_of_name, resnet: bool, b: float = 0.2) -> dict[str, float]:
    """One net's figures as the original find_knowledge_new.py computes them, written here with its loops:
    find_sample (set intersection), find_total_background (per-net filter min σ ≤ 0, plain mean),
    find_peak with KNOWLEDGE_POINT 'both' (N_fg, N_bg, λ at the last checkpoint), find_percent (ρ) and
    find_convergence (m̂ over the list that leaves checkpoint 0 out for ResNets, D read at checkpoints[index])."""
    names = sorted(set(effect_label) & set(effect_distil))
    kept = [n for n in names if np.min(sigma_of_name(n)) > 0]
    ent = {n: np.log(sigma_of_name(n)) + 0.5 * math.log(2 * math.pi) + 0.5 for n in kept}
    K = len(checkpoints)
    total = [np.mean([np.mean(ent[n][k][~fg_of_name(n)]) for n in kept]) for k in range(K)]
    D = np.array([np.sum(wd_row[:e + 1]) for e in range(len(wd_row))])
    fg_num, bg_num, ratio, rho, d_at, slope, d_bg, slope_bg = [], [], [], [], [], [], [], []
    for n in kept:
        fg = fg_of_name(n)
        hi = [(total[k] - ent[n][k]) > b for k in range(K)]
        f = [int(np.sum(hi[k] & fg)) for k in range(K)]
        g = [int(np.sum(hi[k] & ~fg)) for k in range(K)]
        fg_num.append(f[-1])
        bg_num.append(g[-1])
        ratio.append(f[-1] / (f[-1] + g[-1]) if f[-1] + g[-1] else 0)
        union = set().union(*[{tuple(p) for p in np.argwhere(hi[k] & fg)} for k in range(K)])
        rho.append(len({tuple(p) for p in np.argwhere(hi[-1] & fg)}) / len(union) if union else 0)
        ks = list(range(1, K)) if resnet else list(range(K))
        fv, bv = [f[k] for k in ks], [g[k] for k in ks]
        fi, bi = int(np.argmax(fv)), int(np.argmax(bv))
        with np.errstate(divide="ignore", invalid="ignore"):
            d_at.append(D[checkpoints[fi]])
            slope.append(np.float64(fv[fi]) / D[checkpoints[fi]])
            d_bg.append(D[checkpoints[bi]])
            slope_bg.append(np.float64(bv[bi]) / D[checkpoints[bi]])
    with np.errstate(invalid="ignore"):
        return {"N_fg": np.mean(fg_num), "N_bg": np.mean(bg_num), "lambda": np.mean(ratio), "rho": np.mean(rho),
                "D_mean": np.mean(d_at), "D_var": np.var(d_at), "slope": np.mean(slope),
                "D_mean_bg": np.mean(d_bg), "D_var_bg": np.var(d_bg), "slope_bg": np.mean(slope_bg)}


@pytest.mark.parametrize("resnet", [False, True])
def test_compat_original_equals_the_originals_loops(kdq_case, tmp_path, resnet):
    """On random maps (with failed fits, σ* = 0, in one net only) kdq's --compat original prints what the original's
    loops print, for a VGG and for a ResNet (epoch 0 out of m̂: the off-by-one)."""
    c = kdq_case
    t = c["tmp"]
    names = c["names"]
    # failed fits in the distil run: two of the images effective in both
    for name in names[2:4]:
        f = t / "sigma_distil" / "conv" / f"img_{names.index(name)}_effect" / "npy_files" / "best_sigma_entropy.npy"
        arr = np.load(f)
        arr[0] = 0.0
        np.save(f, arr)
    out = tmp_path / "o"
    arch = ["--arch", "resnet_tiny"] if resnet else []
    assert run_script(SCRIPT, *kdq_args(c, out, "conv", "--compat", "original", "--no-figures", *arch)) == 0
    L = json.loads((out / "metrics.json").read_text())["layers"]["conv"]
    effect = {"label": names[1:], "distil": names[:-1]}
    for net in ("label", "distil"):
        run = t / f"sigma_{net}" / "conv"
        full = (run / "full_name_list.txt").read_text().split()

        def sigma_of_name(n):
            return np.load(run / f"img_{full.index(n)}_effect" / "npy_files" / "best_sigma_entropy.npy")[:, 0]

        want = original_figures(effect["label"], effect["distil"], sigma_of_name, c["epochs"], c["wd"][net][0],
                                lambda n: c["fg"][n], resnet)
        for key, value in want.items():
            got = L["metrics"][key][net]
            if not np.isfinite(value):
                assert got is None, (net, key)
            else:
                assert got == pytest.approx(value, rel=1e-9, abs=1e-12), (net, key)
    assert len(L["per_image"]["label"]["names"]) == len(L["per_image"]["distil"]["names"]) + 2


def test_duplicate_names_in_an_effect_list_are_counted_once(hand_case, tmp_path):
    plain, doubled = tmp_path / "plain", tmp_path / "doubled"
    assert run_script(SCRIPT, *hand_args(hand_case, plain, "--no-figures")) == 0
    effect = hand_case["label_sigma"] / "effect_name_list.txt"
    names = effect.read_text().splitlines()
    effect.write_text("\n".join(names + names[:2]) + "\n")  # two names listed twice
    assert run_script(SCRIPT, *hand_args(hand_case, doubled, "--no-figures")) == 0
    a, b = (json.loads((o / "metrics.json").read_text())["layers"]["conv"] for o in (plain, doubled))
    assert a["images"] == b["images"] and a["metrics"] == b["metrics"] and a["per_image"] == b["per_image"]


def test_an_interrupted_metrics_run_does_not_advise_resume(hand_case, tmp_path, monkeypatch, capsys):
    from kdq.function.metrics import analysis

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis, "analyse_layer", interrupted)
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o", "--no-figures")) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith("interrupted; run it again") and "--resume" not in line
    assert not (tmp_path / "o").exists()
