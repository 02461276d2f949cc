"""sigma/find_knowledge_new.py on fabricated sigma and training runs in the SPEC §4 layout."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import types

import numpy as np
import pytest
from PIL import Image

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
              "D_var": 200 / 9, "rho": 1.0, "rho_bg": 1 / 3, "rho_total": 7 / 9},
    "distil": {"N_fg": 5 / 3, "N_bg": 0.0, "lambda": 1.0, "D_mean": 2.5, "D_std": 0.0, "D_var": 0.0,
               "rho": 1.0, "rho_bg": 0.0, "rho_total": 1.0},
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
    # Distil net: baseline 0 at every epoch; concepts only on the foreground, the same at 5 and 10:
    #   N_fg (1, 2, 2), N_bg 0, λ 1, m̂ = 5 for all (first max), D = 2.5 each, ρ = 1, ρ_bg = 0 (empty), ρ_total 1.
    # Image D is effective in both but has NaN in the distil run (skipped, counted); E is effective only in
    # the distil run.
    out = tmp_path / "report"
    assert run_script(SCRIPT, *hand_args(hand_case, out, "--no-figures")) == 0
    printed = capsys.readouterr()
    assert "skipping cls/D.png: σ* is distil: non-finite" in printed.err
    res = json.loads((out / "metrics.json").read_text())
    layer = res["layers"]["conv"]
    assert layer["per_image"]["names"] == ["cls/A.png", "cls/B.png", "cls/C.png"]
    assert layer["images"]["both"] == 4 and layer["images"]["used"] == 3 and layer["images"]["skipped"] == 1
    assert layer["images"]["skipped_images"] == {"cls/D.png": "distil: non-finite"}
    assert layer["checkpoints"] == [0, 5, 10] and layer["checkpoints_source"] == "--checkpoints"
    assert layer["grid"] == 2 and layer["image_size"] == 8
    for net, expected in EXPECTED.items():
        for key, value in expected.items():
            assert layer["metrics"][key][net] == pytest.approx(value, abs=1e-9), (net, key)
    assert layer["per_image"]["label"]["mhat_epoch"] == [5, 10, 10]
    assert layer["per_image"]["distil"]["mhat_epoch"] == [5, 5, 5]
    assert layer["curves"]["baseline_label"] == pytest.approx([0.0, -1 / 12, 0.0], abs=1e-6)  # σ* stored as float32
    m = layer["metrics"]
    assert m["N_bg"]["difference"] == pytest.approx(-1 / 3) and m["N_bg"]["holds"] is True
    assert m["N_fg"]["holds"] is False  # equal: the predicted increase does not hold
    assert m["D_mean"]["holds"] is True and m["lambda"]["holds"] is True
    assert m["rho_bg"]["holds"] is None
    # csv: one row per image × net
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 6 and {r["net"] for r in rows} == {"label", "distil"}
    b_label = next(r for r in rows if r["net"] == "label" and r["image"] == "cls/B.png")
    assert b_label["N_fg"] == "2" and b_label["mhat_epoch"] == "10" and float(b_label["D"]) == 15.0
    # terminal table: aligned, every metric
    table = printed.out.split("\n\n")[0].splitlines()
    assert table[0].startswith("layer") and set(table[1]) <= {"-", " "}
    assert len({len(line) for line in table[:2]}) == 1
    for key in ("N_fg", "N_bg", "lambda", "D_mean", "D_std", "rho", "D_var", "rho_bg", "rho_total"):
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


def test_different_checkpoint_schedules_are_refused(hand_case, tmp_path, capsys):
    (hand_case["label_sigma"] / "run.json").write_text(json.dumps({"settings": {"checkpoints": [0, 5, 10]}}))
    (hand_case["distil_sigma"] / "run.json").write_text(json.dumps({"checkpoints": [0, 4, 10]}))
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o", checkpoints=())[:-1]) == 2
    line = one_error_line(capsys)
    assert "different checkpoint schedules" in line and "[0, 4, 10]" in line
    # K itself differs
    (hand_case["distil_sigma"] / "run.json").unlink()
    (hand_case["label_sigma"] / "run.json").unlink()
    for f in hand_case["distil_sigma"].rglob("best_sigma_entropy.npy"):
        np.save(f, np.ones((4, 1, 2, 2), np.float32))
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o")) == 2
    assert "different checkpoint schedules" in one_error_line(capsys)


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
    assert L["inputs"]["--foreground"] == "central"
    # g = 2: the central square [round(2/6), round(10/6)) = [0, 2) covers every cell → no background cell, the
    # baseline is undefined (NaN → null) and no cell is a concept
    assert L["curves"]["baseline_label"] == [None, None, None]
    assert L["metrics"]["N_fg"]["label"] == 0 and L["metrics"]["N_bg"]["distil"] == 0
    assert (out / "figures" / "conv_entropy_maps.png").stat().st_size > 0


def test_pickled_sigma_file_is_refused(hand_case, tmp_path, capsys):
    f = next(hand_case["label_sigma"].rglob("best_sigma_entropy.npy"))
    np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert run_script(SCRIPT, *hand_args(hand_case, tmp_path / "o")) == 2
    assert "cannot read" in one_error_line(capsys)


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
    """SPEC §3 written out with loops, independent of function/metrics.py."""
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
    """Nearest resize to S, then to g, written as index arithmetic (floor(dst * in / out))."""
    m = np.asarray(Image.open(mask_png).convert("L")) > 0
    to_s = (np.arange(S) * m.shape[0]) // S
    to_g = (np.arange(g) * S) // g
    idx = to_s[to_g]
    return m[np.ix_(idx, idx)]


@pytest.fixture()
def registry(monkeypatch):
    """A stand-in for the model registry (importing the real one builds every torchvision net: seconds).
    Same values as models.ARCHS for the tiny nets; the script only reads .family and .input_size."""
    fake = types.ModuleType("models")
    fake.ARCHS = {"vgg_tiny": types.SimpleNamespace(family="vgg", input_size=64),
                  "resnet_tiny": types.SimpleNamespace(family="resnet", input_size=64)}
    monkeypatch.setitem(__import__("sys").modules, "models", fake)
    return fake


@pytest.fixture()
def kdq_case(tiny_data, tmp_path, registry):
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
        assert L["per_image"]["names"] == names and L["image_size"] == 64 and L["checkpoints_source"] == "run.json"
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
