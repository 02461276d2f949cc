"""The Python API checks its arguments as the CLI checks its flags, by the same rules (issue 25 item 7), and reads
masks by one rule for every dtype (issue 21 item 4).  Each case asserts the exception's type and that its message
names the argument."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import kdq
from kdq.function.checks import LEVEL, check_in
from kdq.function.data.masks import grey_values, mask_to_grid
from kdq.function.sigma.fit import SigmaFitter
from kdq.models import Tap, truncated
from tests.helpers import load_script, run_script
from tests.test_api import hand_maps

CONFIG = kdq.SigmaConfig(grid=4, samples=4, steps=6, break_steps=2, lr=1e-3)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


# ---- SigmaConfig: every field -----------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, error, words", [
    ("target_entropy", math.nan, ValueError, "must be a finite number"),
    ("target_entropy", math.inf, ValueError, "must be a finite number"),
    ("sigma0", 5, ValueError, "must be in (0, 1]"),
    ("sigma0", 0.0, ValueError, "must be in (0, 1]"),
    ("sigma0", math.nan, ValueError, "must be a finite number"),
    ("grid", 0, ValueError, "must be a positive integer"),
    ("grid", 4.5, TypeError, "must be an integer"),
    ("samples", -1, ValueError, "must be a positive integer"),
    ("steps", True, TypeError, "must be an integer"),
    ("break_steps", 80, ValueError, "must be in 0..79"),
    ("break_steps", -1, ValueError, "must be in 0..79"),
    ("lr", 0.0, ValueError, "must be positive"),
    ("lr", math.inf, ValueError, "must be a finite number"),
    ("lam", -7.0, ValueError, "must be positive"),
    ("lam", "7", TypeError, "must be a number"),
    ("lambda_factor", 0, ValueError, "must be positive"),
    ("sigma_min", 0.0, ValueError, "must be positive"),
    ("sigma_max", math.nan, ValueError, "must be a finite number"),
    ("sample_chunk", 0, ValueError, "must be a positive integer"),
    ("amp", "int8", ValueError, "must be one of None, 'bf16', 'fp16'"),
    ("channels_last", "yes", TypeError, "must be True or False"),
    ("compile", 1, TypeError, "must be True or False"),
])
def test_sigma_config_refuses_each_bad_field(field, value, error, words):
    with pytest.raises(error) as err:
        kdq.SigmaConfig(**{field: value})
    assert str(err.value).startswith(f"{field} ") and words in str(err.value)


def test_sigma_config_refuses_sigma_min_above_sigma_max():
    with pytest.raises(ValueError, match=r"^sigma_min must be ≤ sigma_max \(0.1\), got 0.5"):
        kdq.SigmaConfig(sigma_min=0.5, sigma_max=0.1)


def test_sigma_config_keeps_the_edges_of_each_range():
    cfg = kdq.SigmaConfig(sigma0=1.0, break_steps=0, steps=1, target_entropy=0.0, sample_chunk=None, amp="fp16")
    assert cfg.sigma0 == 1.0 and cfg.break_steps == 0


SIGMA_REQUIRED = ["--checkpoint_root", "run", "--layer", "conv", "--data", "data", "--out", "out"]


def cli_accepts(flag: str, text: str, capsys) -> bool:
    parser = load_script("sigma/train_sigma.py").get_args_parser()
    try:
        parser.parse_args([*SIGMA_REQUIRED, flag, text])
    except SystemExit as exc:
        assert exc.code == 2 and f"argument {flag}:" in capsys.readouterr().err
        return False
    return True


def api_accepts(field: str, value: float) -> bool:
    try:
        kdq.SigmaConfig(**{field: value})
    except ValueError as exc:
        assert str(exc).startswith(field)
        return False
    return True


@pytest.mark.parametrize("flag, field, values", [
    ("--sigma0", "sigma0", [5.0, 1.0000001, 1.0, 0.5, 1e-12, 0.0, -0.1, math.nan, math.inf]),
    ("--target-entropy", "target_entropy", [-2.8, 0.0, 40.0, math.nan, -math.inf]),
    ("--lr", "lr", [1e-4, 0.0, -1.0, math.nan]),
    ("--lambda", "lam", [7.0, 0.0, -6.0, math.inf]),
])
def test_the_sigma_flags_and_sigma_config_accept_the_same_values(flag, field, values, capsys):
    """One rule: each value the flag refuses, SigmaConfig refuses, and the other way round."""
    for value in values:
        assert cli_accepts(flag, repr(value), capsys) == api_accepts(field, value), (flag, value)


def test_a_rule_broken_in_a_stage_is_one_line_naming_the_flag(capsys):
    """The stages turn the shared rules' errors into their one-line message (exit 2, no traceback)."""
    code = run_script("sigma/find_knowledge_new.py", "--label-sigma", "a", "--distil-sigma", "b", "--data", "d",
                      "--out", "o", "--level", "1.5")
    err = capsys.readouterr().err
    assert code == 2 and "--level must be in (0, 1), got 1.5" in err and "Traceback" not in err


# ---- fit_sigma --------------------------------------------------------------------------------------------
def test_fit_sigma_refuses_a_model_on_the_meta_device():
    with torch.device("meta"):
        model = small_net()
    with pytest.raises(ValueError, match=r"^model has parameters on the meta device"):
        kdq.fit_sigma(model, "2", torch.randn(2, 3, 16, 16), config=CONFIG)


def test_fit_sigma_runs_a_model_without_parameters_on_the_cpu():
    pool_only = nn.Sequential(nn.AvgPool2d(2), nn.Identity())
    x = torch.randn(2, 3, 16, 16)
    fits = kdq.fit_sigma(pool_only, "1", x, config=CONFIG, seeds=[3, 4])
    reference = SigmaFitter(truncated(pool_only, Tap("1", "1.weight")).eval(), CONFIG, "cpu").fit(x, [3, 4])
    assert [f.sigma.shape for f in fits] == [(4, 4), (4, 4)]
    assert all(np.array_equal(f.sigma, r.sigma) for f, r in zip(fits, reference))


def test_fit_sigma_takes_numpy_images_as_tensors():
    model, x = small_net(), torch.randn(2, 3, 16, 16)
    from_numpy = kdq.fit_sigma(model, "2", x.numpy(), config=CONFIG)
    from_torch = kdq.fit_sigma(model, "2", x, config=CONFIG)
    assert all(np.array_equal(a.sigma, b.sigma) for a, b in zip(from_numpy, from_torch))


@pytest.mark.parametrize("images, error, start", [
    ([[0.0]], TypeError, "images must be a torch.Tensor or a numpy array"),
    (torch.randn(2, 3, 16, 12), ValueError, "images must be (N, 3, S, S)"),
    (torch.randn(2, 1, 16, 16), ValueError, "images must be (N, 3, S, S)"),
    (torch.full((2, 3, 16, 16), math.nan), ValueError, "images hold NaN or infinite values"),
])
def test_fit_sigma_refuses_bad_images(images, error, start):
    with pytest.raises(error) as err:
        kdq.fit_sigma(small_net(), "2", images, config=CONFIG)
    assert str(err.value).startswith(start)


def test_fit_sigma_warns_about_uint8_images():
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    with pytest.warns(UserWarning, match=r"images are torch.uint8 \(raw pixel values\?\)"):
        kdq.fit_sigma(small_net(), "2", x, config=CONFIG)


def test_fit_sigma_refuses_a_grid_finer_than_the_images():
    with pytest.raises(ValueError, match=r"^config.grid 32 is larger than the input size 16"):
        kdq.fit_sigma(small_net(), "2", torch.randn(1, 3, 16, 16), config=CONFIG.with_(grid=32))


def test_fit_sigma_refuses_bad_seeds():
    with pytest.raises(ValueError, match=r"^seeds must hold one seed per image \(2\), got 1"):
        kdq.fit_sigma(small_net(), "2", torch.randn(2, 3, 16, 16), config=CONFIG, seeds=[0])
    with pytest.raises(ValueError, match=r"^seeds\[1\] must be an integer in 0..2\*\*64-1, got -1"):
        kdq.fit_sigma(small_net(), "2", torch.randn(2, 3, 16, 16), config=CONFIG, seeds=[0, -1])


@pytest.mark.parametrize("masks, start", [
    (torch.ones(3, 1, 16, 16, dtype=torch.bool), "masks must be (N, H, W), one 2-D mask per image, got (3, 1, 16, 16)"),
    (torch.ones(3, 16, dtype=torch.bool), "masks must be (N, H, W), one 2-D mask per image, got shape (3, 16)"),
    (torch.ones(2, 16, 16), "masks holds 2 masks for 3 images"),
    (torch.ones(3, 10, 16), "masks are 10×16 but the images are 16×16"),
    (torch.full((3, 16, 16), math.nan), "masks[0] holds NaN or infinite values"),
    (torch.full((3, 16, 16), 255.0), "masks[0]: a float mask holds intensities in [0, 1]"),
    (-torch.ones(3, 16, 16, dtype=torch.int64), "masks[0]: an integer mask holds labels ≥ 0"),
    ([np.ones((16, 16)), np.ones((8, 8)), np.ones((16, 16))], "masks must be one (N, H, W) array"),
])
def test_fit_sigma_refuses_bad_masks(masks, start):
    with pytest.raises(ValueError) as err:
        kdq.fit_sigma(small_net(), "2", torch.randn(3, 3, 16, 16), masks, config=CONFIG)
    assert str(err.value).startswith(start)


def test_a_float_mask_of_0_9_is_foreground_where_it_is_above_0():
    """An 8×8 mask, 0.9 on pixels 2..5 of each axis, for 16 px images and a 4×4 grid.  By hand: the bilinear
    doubling maps output pixel x to input (x + 0.5)/2 − 0.5, which reaches pixels 2..5 for x = 3..12; the nearest
    sampling to 4 cells reads pixels 0, 4, 8, 12, so the foreground cells are rows and columns 1..3: 9 cells."""
    soft = np.zeros((2, 8, 8), np.float32)
    soft[:, 2:6, 2:6] = 0.9
    fg = np.zeros((4, 4), bool)
    fg[1:, 1:] = True
    model, x = small_net(), torch.randn(2, 3, 16, 16)
    fits = kdq.fit_sigma(model, "2", x, torch.from_numpy(soft), CONFIG)
    for fit in fits:
        expected = fit.entropy_map[~fg].mean() - fit.entropy_map[fg].mean()
        assert fit.bg_minus_fg == pytest.approx(expected, abs=1e-6)
    assert np.array_equal(mask_to_grid(soft[0], 16, 4), fg)
    assert mask_to_grid(soft[0], 16, 4).sum() == 9


def test_every_dtype_reads_foreground_as_value_above_0():
    """bool, 0/255 uint8, 0/1 int64 and 0/1 float masks name the same cells, at the grid and at other sizes."""
    base = np.zeros((12, 12), bool)
    base[3:8, 2:9] = True
    for size, grid in ((12, 6), (24, 4), (12, 12)):
        expected = mask_to_grid(base, size, grid)
        for mask in (base.astype(np.uint8) * 255, base.astype(np.int64), base.astype(np.float64),
                     torch.from_numpy(base).float(), torch.from_numpy(base)):
            assert np.array_equal(mask_to_grid(mask, size, grid), expected)


def test_grey_values_keep_every_positive_value_above_0():
    values = np.array([[0.0, 1e-9, 0.001, 0.5, 0.9, 1.0]])
    assert grey_values(values).tolist() == [[0, 1, 1, 128, 230, 255]]  # round(255 v), at least 1 where v > 0
    assert grey_values(np.array([[0, 1, 7, 300]], np.int32)).tolist() == [[0, 255, 255, 255]]  # labels
    assert grey_values(np.array([[0, 1, 200]], np.uint8)).tolist() == [[0, 1, 200]]  # a grey PNG's levels


# ---- compare ----------------------------------------------------------------------------------------------
def compare(label, distil, masks, D_label=(0.0, 0.3), D_distil=(0.0, 0.5), **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kdq.compare(label, distil, masks, list(D_label), list(D_distil), n_boot=kw.pop("n_boot", 10), **kw)


@pytest.mark.parametrize("kw, error, start", [
    ({"D_label": (0.0, -0.3)}, ValueError, "D_label holds negative weight distances"),
    ({"D_distil": (0.0, math.nan)}, ValueError, "D_distil holds NaN/inf"),
    ({"D_label": (0.5, 0.3)}, ValueError, "D_label must not decrease"),
    ({"D_label": ("a", "b")}, TypeError, "D_label must hold real numbers"),
    ({"epochs_label": [5, 2]}, ValueError, "epochs_label must be distinct epochs ≥ 0 in increasing order, got 5 2"),
    ({"epochs_distil": [3, 3]}, ValueError, "epochs_distil must be distinct epochs ≥ 0 in increasing order"),
    ({"epochs_label": [-1, 2]}, ValueError, "epochs_label must be distinct epochs ≥ 0 in increasing order"),
    ({"epochs_label": [0.5, 2]}, TypeError, "epochs_label must be an integer"),
    ({"b": -0.2}, ValueError, "b must be ≥ 0, got -0.2"),
    ({"b": math.nan}, ValueError, "b must be a finite number"),
    ({"n_boot": 0}, ValueError, "n_boot must be an integer in 1..100000"),
    ({"n_boot": 10 ** 9}, ValueError, "n_boot must be an integer in 1..100000"),
    ({"n_boot": 2.5}, TypeError, "n_boot must be an integer"),
    ({"level": 1.5}, ValueError, "level must be in (0, 1), got 1.5"),
    ({"seed": -1}, ValueError, "seed must be an integer in 0..2**64-1"),
    ({"skip_epoch0": "yes"}, TypeError, "skip_epoch0 must be True or False"),
    ({"names": ["a", "b"]}, ValueError, "names must hold one name per image (5), got 2"),
])
def test_compare_refuses_bad_arguments(kw, error, start):
    label, distil, fg = hand_maps()
    with pytest.raises(error) as err:
        compare(label, distil, fg, **kw)
    assert str(err.value).startswith(start)


METRICS_REQUIRED = ["--label-sigma", "a", "--distil-sigma", "b", "--data", "d", "--out", "o"]


@pytest.mark.parametrize("flag, keyword, values", [
    ("--bootstrap", "n_boot", [1, 20, 100001, 0, -5]),
    ("--level", "level", [0.95, 0.5, 1.0, 0.0, 1.5, math.nan]),
    ("--b", "b", [0.2, 0.0, -0.2, math.inf]),
    ("--seed", "seed", [0, 2 ** 64 - 1, 2 ** 64, -1]),
])
def test_the_metrics_flags_and_compare_accept_the_same_values(flag, keyword, values, capsys):
    """One rule: a value --bootstrap, --level, --b or --seed refuses, compare refuses as its argument, and back."""
    module = load_script("sigma/find_knowledge_new.py")
    label, distil, fg = hand_maps()
    for value in values:
        cli_ok = True
        try:
            args = module.get_args_parser().parse_args([*METRICS_REQUIRED, flag, repr(value)])
            if flag == "--level":  # checked when the stage starts (find_knowledge_new.main), by this rule
                check_in(flag, args.level, LEVEL)
        except (SystemExit, ValueError):
            cli_ok = False
        capsys.readouterr()
        try:
            compare(label, distil, fg, **{keyword: value})
            api_ok = True
        except ValueError as exc:
            assert str(exc).startswith(keyword)
            api_ok = False
        assert cli_ok == api_ok, (flag, value)


@pytest.mark.parametrize("masks, start", [
    (np.zeros((0, 2, 2), bool), "masks holds no image"),
    (np.zeros((5, 4), bool), "masks must be (N, H, W), one 2-D mask per image, got shape (5, 4)"),
    (np.zeros((5, 1, 2, 2), bool), "masks must be (N, H, W), one 2-D mask per image, got (5, 1, 2, 2)"),
    (np.full((5, 2, 2), math.nan), "masks[0] holds NaN or infinite values"),
    (np.zeros((5, 4, 6), bool), "masks must be (N, g, g) cells or square (N, S, S) masks"),
])
def test_compare_refuses_bad_masks(masks, start):
    label, distil, _ = hand_maps()
    with pytest.raises(ValueError) as err:
        compare(label[: len(masks)], distil[: len(masks)], masks)
    assert str(err.value).startswith(start)


def test_compare_with_no_images_names_the_masks():
    with pytest.raises(ValueError, match="^masks holds no image"):
        compare(np.ones((0, 2, 2, 2)), np.ones((0, 2, 2, 2)), np.zeros((0, 2, 2)))


@pytest.mark.parametrize("dtype, value", [(np.float32, 0.9), (np.float64, 0.01), (np.int64, 1), (np.uint8, 255)])
def test_compare_reads_full_size_masks_of_any_dtype_by_value_above_0(dtype, value):
    """4×4 masks at a 2×2 grid: nearest sampling reads pixels 0 and 2, so a mask on pixels 0..1 × 0..1 is cell
    (0, 0), the hand maps' foreground: the distil net has 1 foreground concept, the label net none."""
    label, distil, _ = hand_maps()
    masks = np.zeros((5, 4, 4), dtype)
    masks[:, :2, :2] = value
    rows = {row["metric"]: row for row in compare(label, distil, masks).rows}
    assert rows["N_fg"]["label"] == 0 and rows["N_fg"]["distil"] == 1
    assert rows["N_bg"]["label"] == 0 and rows["N_bg"]["distil"] == 0


# ---- WeightDistance ---------------------------------------------------------------------------------------
def test_weight_distance_refuses_a_zero_initial_weight():
    model = small_net()
    with torch.no_grad():
        model[2].weight.zero_()
    with pytest.raises(ValueError, match=r"^weights: parameter '2.weight' has norm 0.0 at the start"):
        kdq.WeightDistance(model, {"conv": "2.weight", "fc3": "6.weight"})
    kdq.WeightDistance(model, {"fc3": "6.weight"})  # the other weights are fine
