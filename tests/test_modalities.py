"""Token sequences and point clouds through the four stages (issue 24): every stage's command line at a tiny scale
for text (transformer_tiny, bilstm_tiny) and points (pointnet_tiny, dgcnn_tiny), same seed → same bytes, exact
resume, the bad-input catalogue of the text and point readers, and kdq.fit_sigma on the registry's nets.

The expected values are literals or read straight from the dataset files (token counts from the JSON lines,
point counts from the clouds), never from the modules under test.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import kdq
from kdq.function.sigma.layout import EFFECT_LIST, FULL_LIST, NON_EFFECT_LIST, array_path, read_names
from kdq.models import build_model
from tests.helpers import one_error_line, run_script

pytestmark = pytest.mark.usefixtures("one_thread")

POINTS = 64  # points per cloud of the point dataset
EPOCHS = (0, 1, 2)  # the label and distilled runs' checkpoints: K = 3 maps per input
COMMON = ("--device", "cpu", "--threads", 1, "--no-progress")
TRAIN = ("--batch-size", 16, "--lr", 0.02, *COMMON)
SIGMA = ("--split", "train", "--pic-num", 6, "--effect-num", 4, "--samples", 4, "--steps", 6, "--break-steps", 2,
         "--lr", 4e-4, "--batch-images", 2, "--effective-rule", "off", *COMMON)
SIX_METRICS = ("N_fg", "N_bg", "lambda", "D_mean", "D_std", "rho")  # the paper's six (Table 1)
CSV_COLUMNS = ("N_fg", "N_bg", "lambda", "D", "rho")  # per input: D_mean and D_std are over the inputs' D

# (modality, arch, layer, whole study or only train_net + sigma)
STUDIES = {"transformer": ("text", "transformer_tiny", "conv", True),
           "bilstm": ("text", "bilstm_tiny", "conv", False),
           "pointnet": ("points", "pointnet_tiny", "conv", True),
           "dgcnn": ("points", "dgcnn_tiny", "fc1", False)}


# ---------------------------------------------------------------------------------------------
# datasets and runs shared by the module
# ---------------------------------------------------------------------------------------------
def make_data(out: Path, modality: str, *extra) -> Path:
    """A tiny embedded dataset of ``modality`` written by the make_dataset stage's command line."""
    if modality == "points":
        extra = ("--points", POINTS, *extra)
    assert run_script("make_dataset", "--modality", modality, "--out", out, "--teacher-per-class", 8,
                      "--train-per-class", 3, "--val-per-class", 2, "--no-progress", *extra) == 0
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unit_data")
    return {m: make_data(root / m, m) for m in ("text", "points")}


@pytest.fixture(scope="module")
def threads_one():
    """The module's shared runs on one thread (their stages get --threads 1 too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(data: Path, arch: str, split: str, epochs: int, out: Path, *extra) -> int:
    return run_script("train_net/train_net.py", "--arch", arch, "--data", data, "--split", split, "--epochs", epochs,
                      *TRAIN, "--out", out, *extra)


def sigma(root: Path, data: Path, layer: str, out: Path, *extra) -> int:
    return run_script("sigma/train_sigma.py", "--checkpoint_root", root, "--layer", layer, "--data", data, *SIGMA,
                      "--out", out, *extra)


def run_study(data: Path, arch: str, layer: str, whole: bool, runs: Path) -> dict[str, Path]:
    """The stages' command lines in order (each asserted to exit 0); their output folders by stage."""
    out = {"label": runs / "label", "sigma_label": runs / "sigma_label"}
    assert train(data, arch, "train", 2, out["label"], "--checkpoints", *EPOCHS) == 0
    assert sigma(out["label"], data, layer, out["sigma_label"]) == 0
    if not whole:
        return out
    out.update(teacher=runs / "teacher", distil=runs / "distil", sigma_distil=runs / "sigma_distil",
               metrics=runs / "metrics")
    assert train(data, arch, "teacher", 2, out["teacher"], "--checkpoints", 2) == 0
    assert run_script("distillation/distillation.py", "--teacher_checkpoint", out["teacher"] / "2.pth.tar",
                      "--arch", arch, "--layer", layer, "--data", data, "--split", "train", "--epochs", 2,
                      "--finetune-epochs", 1, "--checkpoints", *EPOCHS, *TRAIN, "--out", out["distil"]) == 0
    assert sigma(out["distil"], data, layer, out["sigma_distil"]) == 0
    assert run_script("sigma/find_knowledge_new.py", "--label-sigma", out["sigma_label"], "--distil-sigma",
                      out["sigma_distil"], "--data", data, "--split", "train", "--layer", layer, "--bootstrap", 20,
                      "--threads", 1, "--no-progress", "--out", out["metrics"]) == 0
    return out


@pytest.fixture(scope="module")
def studies(datasets, tmp_path_factory, threads_one) -> dict[str, dict[str, Path]]:
    """Every study of :data:`STUDIES`, run once for the module (lazily: a test asks for the ones it needs)."""
    cache: dict[str, dict[str, Path]] = {}

    def get(name: str) -> dict[str, Path]:
        if name not in cache:
            modality, arch, layer, whole = STUDIES[name]
            torch.set_num_threads(1)
            cache[name] = run_study(datasets[modality], arch, layer, whole, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


# ---------------------------------------------------------------------------------------------
# what the tests read from the files (independently of kdq's readers)
# ---------------------------------------------------------------------------------------------
def units_of(data: Path, modality: str, name: str) -> int:
    """The number of real units of input ``name`` of the train split: its tokens, or its cloud's points."""
    if modality == "points":
        return int(np.load(data / "train" / name).shape[0])
    for line in (data / "train.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["id"] == name:
            return len(record["tokens"])
    raise AssertionError(f"no sentence {name} in {data / 'train.jsonl'}")


def run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def npy_bytes(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*.npy"))}


def files_of(run: Path) -> dict[str, bytes]:
    """Every file of a run but its run.json (which records times)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != "run.json"}


# ---------------------------------------------------------------------------------------------
# 1. end to end
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(STUDIES))
def test_stages_record_the_modality_and_write_unit_maps(name, studies, datasets):
    modality, arch, layer, whole = STUDIES[name]
    runs, data = studies(name), datasets[modality]
    for stage in ("label", "sigma_label") + (("teacher",) if whole else ()):
        record = run_json(runs[stage])
        assert record["status"] == "complete", stage
        assert record["settings"]["modality"] == modality, stage
        assert record["model"]["modality"] == modality and record["model"]["arch"] == arch, stage
    full, eff = read_names(runs["sigma_label"] / FULL_LIST), read_names(runs["sigma_label"] / EFFECT_LIST)
    assert len(full) == 6 and len(eff) == 4 and read_names(runs["sigma_label"] / NON_EFFECT_LIST) == []
    lengths = set()
    for n in eff:
        best = np.load(array_path(runs["sigma_label"], full.index(n), "best_sigma_entropy"), allow_pickle=False)
        units = units_of(data, modality, n)
        lengths.add(units)
        assert best.shape == (len(EPOCHS), 1, 1, units), n
        assert np.isfinite(best).all() and (best > 0).all(), n  # every checkpoint fitted, on real units only
    if modality == "points":
        assert lengths == {POINTS}
    else:
        assert len(lengths) > 1  # sentences of several lengths: the maps are not all padded to one L
    if whole:
        assert run_json(runs["distil"])["model"]["modality"] == modality


@pytest.mark.parametrize("name", [n for n, s in STUDIES.items() if s[3]])
def test_metrics_report_the_six_metrics_and_draw_the_units(name, studies):
    runs = studies(name)
    layer = STUDIES[name][2]
    with open(runs["metrics"] / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(CSV_COLUMNS) <= set(rows[0])
    assert {r["net"] for r in rows} == {"label", "distil"} and len(rows) == 2 * 4  # 4 effective inputs per net
    table = {r["metric"]: r for r in json.loads((runs["metrics"] / "metrics.json").read_text())["table"]
             if r["layer"] == layer}
    for key in SIX_METRICS:
        assert key in table, key
        for net in ("label", "distil"):
            assert math.isfinite(float(table[key][net])), (key, net)
    assert list((runs["metrics"] / "figures").glob("*entropy_maps*.png"))


@pytest.mark.parametrize("stage", ["distil", "metrics"])
def test_distillation_and_metrics_record_the_modality_they_ran_on(stage, studies):
    assert run_json(studies("transformer")[stage])["settings"]["modality"] == "text"


# ---------------------------------------------------------------------------------------------
# 2. same seed → same bytes; 3. resume
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["transformer", "pointnet"])
def test_same_seed_gives_the_same_bytes(name, studies, datasets, tmp_path):
    modality, _, layer, _ = STUDIES[name]
    runs = studies(name)
    again = tmp_path / "again"
    assert sigma(runs["label"], datasets[modality], layer, again) == 0
    first, second = npy_bytes(runs["sigma_label"]), npy_bytes(again)
    assert len(first) == 4 * 5 and first == second  # 4 inputs × 5 arrays


@pytest.mark.parametrize("name", ["transformer", "pointnet"])
def test_sigma_resume_after_interruption_gives_the_same_files(name, studies, datasets, tmp_path, monkeypatch):
    from kdq.function.sigma.run import ImageRecord

    modality, _, layer, _ = STUDIES[name]
    runs, data = studies(name), datasets[modality]
    original, calls = ImageRecord.write, []

    def killed(self, out, epochs):
        calls.append(self.pos)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run dies while writing its third input (the second batch of 2)
        return original(self, out, epochs)

    part = tmp_path / "part"
    monkeypatch.setattr(ImageRecord, "write", killed)
    assert sigma(runs["label"], data, layer, part) == 130
    monkeypatch.setattr(ImageRecord, "write", original)
    assert len(list(part.glob("img_*"))) == 2
    assert sigma(runs["label"], data, layer, part, "--resume") == 0
    assert files_of(part) == files_of(runs["sigma_label"])
    assert 0 < run_json(part)["fits_this_session"] < run_json(runs["sigma_label"])["fits_this_session"]


def test_train_net_resume_of_a_complete_text_run_does_nothing(studies, datasets):
    runs = studies("transformer")
    before = files_of(runs["label"])
    assert train(datasets["text"], "transformer_tiny", "train", 2, runs["label"], "--checkpoints", *EPOCHS,
                 "--resume") == 0
    assert files_of(runs["label"]) == before
    assert run_json(runs["label"])["status"] == "complete"


def test_batching_does_not_change_the_listed_inputs_files(studies, datasets, tmp_path):
    """The name lists and the folders of the inputs they list do not depend on --batch-images (a last round may fit
    more inputs than --effect-num needs: their folders are written but not listed, docs/stages.md)."""
    runs = studies("transformer")
    three = tmp_path / "b3"
    assert sigma(runs["label"], datasets["text"], "conv", three, "--batch-images", 3) == 0
    listed = (runs["sigma_label"] / "full_name_list.txt").read_text().splitlines()
    assert (three / "full_name_list.txt").read_text().splitlines()[:len(listed)] == listed
    for name in ("effect_name_list.txt", "non_effect_name_list.txt"):
        assert (three / name).read_text() == (runs["sigma_label"] / name).read_text()
    named = set((three / "effect_name_list.txt").read_text().split()) | \
        set((three / "non_effect_name_list.txt").read_text().split())
    kept = {f"img_{listed.index(name)}_" for name in named}  # the folders of the listed inputs
    ours, theirs = ({k: v for k, v in files_of(run).items() if k.startswith(tuple(kept))}
                    for run in (three, runs["sigma_label"]))
    assert ours == theirs and len({k.split("/")[0] for k in ours}) == len(named)


# ---------------------------------------------------------------------------------------------
# 4. bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------
def edit_sentences(data: Path, change, first_only: bool = True) -> None:
    """Rewrite the first record of the train split (every record: ``first_only`` False) with ``change(record)``."""
    path = data / "train.jsonl"
    lines = path.read_text().splitlines()
    for i in range(1 if first_only else len(lines)):
        record = json.loads(lines[i])
        change(record)
        lines[i] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


def edit_first_sentence(data: Path, change) -> None:
    edit_sentences(data, change)


def too_long(record: dict) -> None:
    record["tokens"] = ["the"] * 17  # dataset.json's max_length is 16
    record["foreground"] = [0] * 17


def first_cloud(data: Path) -> tuple[Path, Path]:
    """The first cloud of the train split and its foreground file."""
    cloud = sorted((data / "train").rglob("*.npy"))[0]
    return cloud, data / "seg" / cloud.relative_to(data)


def nan_cloud(data: Path) -> None:
    cloud, _ = first_cloud(data)
    coords = np.load(cloud)
    coords[3, 1] = np.nan
    np.save(cloud, coords)


def empty_cloud(data: Path) -> None:
    np.save(first_cloud(data)[0], np.zeros((0, 3), dtype=np.float32))


def short_flags(data: Path) -> None:
    seg = first_cloud(data)[1]
    np.save(seg, np.load(seg)[:-1])


DAMAGE = {  # case: (modality, how the dataset is damaged, what the error line says)
    "sentence_too_long": ("text", lambda d: edit_first_sentence(d, too_long), "longer than max_length 16"),
    "empty_sentence": ("text", lambda d: edit_first_sentence(d, lambda r: r.update(tokens=[], foreground=[])),
                       "empty sentence"),
    "foreground_wrong_length": ("text", lambda d: edit_first_sentence(
        d, lambda r: r.update(foreground=r["foreground"] + [0])), "one flag per token"),
    "nan_coordinates": ("points", nan_cloud, "NaN"),
    "zero_points": ("points", empty_cloud, "zero points"),
    "flags_of_another_length": ("points", short_flags, f"its cloud has {POINTS} points"),
}


def expect_one_line_exit_2(code: int, capsys, out: Path, *words: str) -> str:
    """Exit 2, one error line holding ``words`` (returned), nothing in ``out``."""
    assert code == 2
    line = one_error_line(capsys)
    assert "error" in line and "Traceback" not in line, line
    for w in words:
        assert w in line, (w, line)
    assert not out.exists(), sorted(out.rglob("*"))
    return line


@pytest.mark.parametrize("stage", ["train_net", "train_sigma"])
@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_dataset_is_one_line_exit_2(case, stage, datasets, studies, tmp_path, capsys):
    modality, damage, expected = DAMAGE[case]
    data = tmp_path / "data"
    shutil.copytree(datasets[modality], data)
    damage(data)
    out = tmp_path / "out"
    if stage == "train_net":
        arch = "transformer_tiny" if modality == "text" else "pointnet_tiny"
        code = train(data, arch, "train", 1, out)
    else:
        name = "transformer" if modality == "text" else "pointnet"
        capsys.readouterr()
        code = sigma(studies(name)["label"], data, STUDIES[name][2], out)
    expect_one_line_exit_2(code, capsys, out, expected)


@pytest.mark.parametrize("case", ["text_flag_on_images", "vgg_on_text", "transformer_on_points",
                                  "sigma_points_flag_on_text", "sigma_longer_sentences_than_the_net"])
def test_modality_mismatch_is_one_line_exit_2(case, tiny_data, datasets, studies, tmp_path, capsys):
    out = tmp_path / "out"
    if case == "sigma_points_flag_on_text":
        code = sigma(studies("transformer")["label"], datasets["text"], "conv", out, "--modality", "points")
        words = ("--modality points", "text")
    elif case == "sigma_longer_sentences_than_the_net":  # the net was trained on max_length 16
        data = make_data(tmp_path / "long", "text", "--max-length", 20)
        capsys.readouterr()
        code = sigma(studies("transformer")["label"], data, "conv", out)
        words = ("up to 20 tokens", "at most 16")
    elif case == "text_flag_on_images":
        code = train(tiny_data, "vgg_tiny", "train", 1, out, "--modality", "text")
        words = ("--modality text", "image")
    elif case == "vgg_on_text":
        code = train(datasets["text"], "vgg_tiny", "train", 1, out)
        words = ("--arch vgg_tiny", "text")
    else:
        code = train(datasets["points"], "transformer_tiny", "train", 1, out)
        words = ("--arch transformer_tiny", "points")
    expect_one_line_exit_2(code, capsys, out, *words)


def test_sigma_on_a_dataset_with_a_larger_vocabulary_is_one_line_exit_2(studies, tmp_path, capsys):
    data = make_data(tmp_path / "data", "text")
    vocab = data / "vocab.txt"
    words = vocab.read_text().splitlines()
    vocab.write_text("\n".join(words + [f"extra{i}" for i in range(8)]) + "\n")  # ids 46..53: not in the net
    edit_sentences(data, lambda r: r.update(tokens=["extra3"] + r["tokens"][1:]), first_only=False)
    capsys.readouterr()
    out = tmp_path / "out"
    code = sigma(studies("transformer")["label"], data, "conv", out)
    expect_one_line_exit_2(code, capsys, out, "vocab")


def test_distillation_from_a_teacher_of_another_modality_names_the_modalities(studies, datasets, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    code = run_script("distillation/distillation.py", "--teacher_checkpoint", studies("transformer")["teacher"] /
                      "2.pth.tar", "--arch", "pointnet_tiny", "--layer", "conv", "--data", datasets["points"],
                      "--split", "train", "--epochs", 1, "--finetune-epochs", 1, *TRAIN, "--out", out)
    line = expect_one_line_exit_2(code, capsys, out, "text", "points")
    assert "--image-size" not in line and " px" not in line, line


# ---------------------------------------------------------------------------------------------
# 5. kdq.fit_sigma on the registry's nets
# ---------------------------------------------------------------------------------------------
FAST_FIT = kdq.SigmaConfig(samples=8, steps=6, break_steps=2)


@pytest.mark.parametrize("arch", ["transformer_tiny", "bilstm_tiny"])
def test_fit_sigma_on_a_text_net_is_nan_exactly_on_padding(arch):
    torch.manual_seed(0)
    vocab, length = 20, 8
    model = build_model(arch, 4, vocab_size=vocab, max_length=length)
    ids = torch.zeros(3, length, dtype=torch.long)  # 0 is the padding id
    for i, n in enumerate((3, 8, 5)):
        ids[i, :n] = torch.randint(2, vocab, (n,))
    foreground = torch.zeros(3, length, dtype=torch.bool)
    foreground[:, 1] = True
    fits = kdq.fit_sigma(model, "proj", ids, foreground, config=FAST_FIT, units=kdq.Tokens())
    assert len(fits) == 3
    for row, fit in zip(ids, fits):
        pad = (row == 0).numpy()
        assert fit.sigma.shape == (length,) and fit.entropy_map.shape == (length,)
        np.testing.assert_array_equal(np.isnan(fit.sigma), pad)
        np.testing.assert_array_equal(np.isnan(fit.entropy_map), pad)
        assert (fit.sigma[~pad] > 0).all()


@pytest.mark.parametrize("arch, layer", [("pointnet_tiny", "features.4"), ("dgcnn_tiny", "fuse")])
def test_fit_sigma_on_a_point_net_has_one_sigma_per_point(arch, layer):
    torch.manual_seed(0)
    model = build_model(arch, 4)
    clouds = torch.randn(2, 32, 3, generator=torch.Generator().manual_seed(1))
    foreground = clouds[..., 2] > 0
    fits = kdq.fit_sigma(model, layer, clouds, foreground, config=FAST_FIT, units="points")
    assert len(fits) == 2
    for fit in fits:
        assert fit.sigma.shape == (32,) and np.isfinite(fit.sigma).all() and (fit.sigma > 0).all()
        assert np.isfinite(fit.entropy_map).all()


def test_the_modality_is_not_the_papers_only_for_tokens_and_points():
    from kdq.function.metrics.caveats import setting_differences

    def differences(modality):
        return [d for d in setting_differences({"stage": "train_sigma", "settings": {"modality": modality}})
                if d.startswith("--modality")]

    assert differences(None) == [] and differences("image") == []
    assert differences("text") == ["--modality text (paper: image)"]


def test_a_users_text_model_through_module_factory(datasets, tmp_path):
    """``--arch package.module:factory`` on text data: the model takes the dataset's modality (noise at its ``embed``),
    the factory gets the data's vocab_size and max_length by keyword, and the sigma stage rebuilds it from run.json."""
    arch = "tests.user_models:bag_of_words"
    assert train(datasets["text"], arch, "train", 1, tmp_path / "label", "--taps", "conv=proj,fc3=head") == 0
    model = run_json(tmp_path / "label")["model"]
    vocab = (datasets["text"] / "vocab.txt").read_text().splitlines()
    assert (model["modality"], model["inject"], model["options"]["vocab_size"]) == ("text", "embed", len(vocab))
    assert sigma(tmp_path / "label", datasets["text"], "conv", tmp_path / "sigma") == 0
    name = (tmp_path / "sigma" / "effect_name_list.txt").read_text().split()[0]
    sentence = next(json.loads(line) for line in (datasets["text"] / "train.jsonl").read_text().splitlines()
                    if json.loads(line)["id"] == name)
    position = (tmp_path / "sigma" / "full_name_list.txt").read_text().split().index(name)
    maps = np.load(tmp_path / "sigma" / f"img_{position}_effect" / "npy_files" / "best_sigma_entropy.npy")
    assert maps.shape[-1] == len(sentence["tokens"])


def test_a_users_point_model_through_module_factory(datasets, tmp_path):
    arch = "tests.user_models:point_mlp"
    assert train(datasets["points"], arch, "train", 1, tmp_path / "label", "--taps", "conv=mlp,fc3=head") == 0
    assert run_json(tmp_path / "label")["model"]["modality"] == "points"
    assert sigma(tmp_path / "label", datasets["points"], "conv", tmp_path / "sigma") == 0
    folder = next((tmp_path / "sigma").glob("img_0_*"))
    assert np.load(folder / "npy_files" / "best_sigma_entropy.npy").shape[-1] == 64  # one σ per point


def test_the_embedded_text_and_points_datasets_are_kdqs_embedded_kind(datasets):
    from kdq.function.data.layout import dataset_kind

    assert dataset_kind(datasets["text"]) == "embedded" and dataset_kind(datasets["points"]) == "embedded"
