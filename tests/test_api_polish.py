"""The Python API's rough edges (issue 23, part 7): ``dir(kdq)`` tab-completes, ``compare`` without a made-up layer
name, the API report's inputs and entropy-map figure, and ``fit_sigma`` on an ``nn.Module`` or a graph node with
the stages' own check of a tap's name."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import kdq
from kdq.function.archs import resolve_arch
from kdq.function.cli import UserError
from tests.test_api import hand_maps

FIGURES = {"concept_curves.png", "weight_distance.png", "metric_panels.png"}
FAST = kdq.SigmaConfig(samples=4, steps=3, break_steps=1, grid=4)


def quiet_compare(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the hand maps' label net has no concept: it warns
        return kdq.compare(*args, **kwargs)


# ---- dir() -------------------------------------------------------------------------------------------------

def test_dir_lists_the_public_names_in_a_fresh_interpreter():
    code = "import json, kdq, kdq.models as m; print(json.dumps([dir(kdq), dir(m)]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    top, models = json.loads(out.stdout)
    assert {"fit_sigma", "compare", "SigmaConfig", "SigmaResult", "WeightDistance", "models", "function"} <= set(top)
    assert {"build_model", "MODELS", "TAPS", "Tap", "truncated", "arch_info", "family_of", "LAYERS"} <= set(models)
    assert not {"importlib", "annotations", "dataclass"} & (set(top) | set(models))  # no import leftovers


def test_every_name_dir_lists_resolves():
    import kdq.models

    for module in (kdq, kdq.models):
        for name in dir(module):
            getattr(module, name)  # an AttributeError here: dir() promised a name that is not there


# ---- compare without a layer name --------------------------------------------------------------------------

def test_compare_without_layer_names_no_layer(tmp_path):
    label, distil, fg = hand_maps(12)
    result = quiet_compare(label, distil, fg, [0.0, 0.3], [0.0, 0.5], n_boot=10)
    table = result.table()
    assert "layer" not in table
    assert table.splitlines()[0].split()[:3] == ["metric", "label", "distil"]
    assert table.splitlines()[2].split()[:3] == ["N_fg", "0", "1"]
    report = result.write_report(tmp_path).read_text()
    assert report.splitlines()[0] == "# Label net vs distil net: the three hypotheses"
    assert "| metric | label | distil | distil − label [95% CI] | predicted | verdict |" in report
    assert "| N_fg | 0 | 1 | +1 [1, 1] |" in report and "| layer " not in report
    assert "*Figure 1.* " in report  # not "Figure 1 (layer)."
    assert {p.name for p in (tmp_path / "figures").iterdir()} == FIGURES
    meta = json.loads((tmp_path / "metrics.json").read_text())
    assert meta["table"][0]["layer"] is None and meta["table"][0]["metric"] == "N_fg"


def test_compare_with_a_layer_names_it(tmp_path):
    label, distil, fg = hand_maps(12)
    result = quiet_compare(label, distil, fg, [0.0, 0.3], [0.0, 0.5], n_boot=10, layer="conv")
    assert result.table().splitlines()[2].split()[:4] == ["conv", "N_fg", "0", "1"]
    report = result.write_report(tmp_path).read_text()
    assert report.splitlines()[0] == "# Label net vs distil net at conv: the three hypotheses"
    assert "| conv | N_fg | 0 | 1 | +1 [1, 1] |" in report
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {f"conv_{name}" for name in FIGURES}
    assert set(json.loads((tmp_path / "metrics.json").read_text())["layers"]) == {"conv"}


# ---- the API report: its inputs, and the entropy maps with images --------------------------------------------

def inputs_section(report: str) -> list[str]:
    return [line for line in report.split("## Inputs", 1)[1].splitlines() if line.startswith("- ")]


def test_the_api_report_lists_its_inputs(tmp_path):
    label, distil, fg = hand_maps(12)
    result = quiet_compare(label, distil, fg, [0.0, 0.3], [0.0, 0.5], n_boot=10, epochs_distil=[0, 4])
    lines = inputs_section(result.write_report(tmp_path).read_text())
    assert lines == ["- `label_maps`: `ndarray (12, 2, 2, 2), float64`",
                     "- `distil_maps`: `ndarray (12, 2, 2, 2), float64`",
                     "- `masks`: `ndarray (12, 2, 2), bool`",
                     "- `D_label`: `list (2,), float64: 0 0.3`",
                     "- `D_distil`: `list (2,), float64: 0 0.5`",
                     "- `epochs_label`: `0 1 (default)`",
                     "- `epochs_distil`: `0 4`"]
    assert not (tmp_path / "figures" / "entropy_maps.png").exists()  # no images: no entropy-map figure


def test_the_api_report_draws_the_entropy_maps_of_images_given(tmp_path):
    label, distil, fg = hand_maps(12)
    images = np.zeros((12, 8, 8, 3), np.uint8)  # (N, S, S, 3) pixels, shown as given
    images[:, :4] = 200
    masks = np.zeros((12, 8, 8), bool)  # full-size masks, each cell's pixels as fg (the hand maps' cell 0, 0)
    masks[:, :4, :4] = True
    result = quiet_compare(label, distil, masks, [0.0, 0.3], [0.0, 0.5], n_boot=10, images=images)
    shown = result.layer.figure_data["images"]
    assert [name for name, _, _ in shown] == [f"image_{i}" for i in range(12)]
    assert np.array_equal(shown[0][1], images[0]) and np.array_equal(shown[0][2], masks[0])
    report = result.write_report(tmp_path, show_images=2).read_text()
    assert (tmp_path / "figures" / "entropy_maps.png").stat().st_size > 0
    assert "![entropy_maps](figures/entropy_maps.png)" in report
    assert "- `images`: `ndarray (12, 8, 8, 3), uint8`" in inputs_section(report)
    assert "S = 8" in report  # the images' side, not the masks' grid


def test_normalised_images_are_rescaled_for_display_and_cells_upsampled():
    label, distil, fg = hand_maps(12)
    images = torch.zeros(12, 3, 4, 4)  # (N, 3, S, S), normalised: -1 … 1
    images[:, :, 0] = -1.0
    images[:, :, 1] = 1.0
    result = quiet_compare(label, distil, fg, [0.0, 0.3], [0.0, 0.5], n_boot=10, images=images)
    _, rgb, mask = result.layer.figure_data["images"][0]
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[0] == 0).all() and (rgb[1] == 255).all() and (rgb[2:] == 128).all()  # (0 + 1) / 2 · 255 → 128
    expected = np.zeros((4, 4), bool)
    expected[:2, :2] = True  # the (2, 2) cells' cell 0, 0 upsampled to 4 px
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize("images, message", [
    (np.zeros((11, 3, 8, 8)), "images holds 11 images for 12 masks"),
    (np.zeros((12, 8, 8)), "images must be (N, 3, S, S) or (N, S, S, 3)"),
    (np.full((12, 3, 8, 8), np.nan), "images must hold finite real numbers"),
])
def test_bad_images_for_the_report_name_the_argument(images, message):
    label, distil, fg = hand_maps(12)
    with pytest.raises(ValueError) as err:
        quiet_compare(label, distil, fg, [0.0, 0.3], [0.0, 0.5], n_boot=10, images=images)
    assert str(err.value).startswith(message), str(err.value)


# ---- fit_sigma: a module as the layer, a graph node, one check of the name ---------------------------------

class TinyResidual(nn.Module):
    """A residual block in miniature: ``add`` (its sum before the ReLU) is a graph node, not a submodule."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h) + h)
        return self.fc(h.mean((2, 3)))


def tiny_residual():
    torch.manual_seed(0)
    return TinyResidual().eval(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def small_resnet():
    import torchvision

    return torchvision.models.resnet18(num_classes=3).eval()


def test_fit_sigma_takes_the_layer_as_a_module(one_thread):
    model, x = tiny_residual()
    by_module = kdq.fit_sigma(model, model.conv2, x, config=FAST)
    by_name = kdq.fit_sigma(model, "conv2", x, config=FAST)
    assert all(np.array_equal(a.sigma, b.sigma) and a.sigma_f2 == b.sigma_f2 for a, b in zip(by_module, by_name))
    with pytest.raises(ValueError, match="^layer is a Conv2d that is not a submodule of model$"):
        kdq.fit_sigma(model, nn.Conv2d(3, 3, 1), x, config=FAST)


def test_fit_sigma_at_a_graph_node(one_thread):
    model, x = tiny_residual()
    fits = kdq.fit_sigma(model, "add", x, config=FAST)
    assert len(fits) == 2 and all(f.sigma.shape == (4, 4) and f.sigma_f2 > 0 for f in fits)
    with torch.no_grad():
        h = torch.relu(model.conv1(x))
        expected = model.conv2(h) + h  # the sum the graph node holds, by hand
    torch.testing.assert_close(kdq.models.truncated(model, kdq.models.Tap("add", "conv2.weight"))(x), expected)


def test_a_wrong_layer_name_is_the_same_error_in_the_api_and_the_cli():
    model, x = small_resnet(), torch.zeros(1, 3, 32, 32)
    tail = "has no submodule or graph node 'layer5.conv2' (closest: 'layer4.1.conv2', 'layer4.0.conv2'"
    with pytest.raises(ValueError) as api:
        kdq.fit_sigma(model, "layer5.conv2", x, config=FAST)
    assert str(api.value).startswith(f"layer: model {tail}"), str(api.value)
    assert "Hint" not in str(api.value) and "\n" not in str(api.value)  # not torch.fx's message
    with pytest.raises(UserError) as cli:
        resolve_arch("torchvision:resnet18", "conv=layer5.conv2")
    assert str(cli.value).startswith(f"--taps conv: torchvision:resnet18 {tail}"), str(cli.value)
