"""Your own model (issues 16, 23): ``torchvision:<name>``, ``timm:<name>`` and ``package.module:factory``
architectures with ``--taps`` (submodules and torch.fx graph nodes), the hook-based truncated forward on a model
torch.fx cannot trace, and the parameters "up to" a tap."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from kdq.function.archs import resolve_arch
from kdq.function.cli import UserError
from kdq.models import ARCH_NAMES, MODELS, Tap, params_up_to, truncated
from kdq.models.external import parse_taps, taps_text
from tests.user_models import GatedNet

GATED = "tests.user_models:gated_net"
HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install timm; CI installs it)")


# factories of the package.module:factory form, for the tests below
def pretrained_first(pretrained: bool = False, num_classes: int = 1000, **kwargs) -> nn.Module:
    """timm's factory signature: a positional call ``factory(5)`` would read 5 as ``pretrained`` (and download)."""
    if pretrained is not False:
        raise RuntimeError(f"pretrained={pretrained!r}: would download weights")
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def classes_positional(classes):
    """A factory whose parameter has another name: kdq cannot pass it num_classes= by keyword."""
    return nn.Sequential(nn.Flatten(), nn.Linear(12, classes))


def gated(seed: int = 0) -> GatedNet:
    torch.manual_seed(seed)
    return GatedNet(num_classes=3).eval()


def test_registry_names_are_the_light_list():
    assert ARCH_NAMES == tuple(MODELS)


def test_fx_cannot_trace_the_gated_net_but_the_hook_truncation_can():
    model = gated()
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 16, 16)
    ran_after = []
    model.fc3.register_forward_hook(lambda *a: ran_after.append(1))
    with torch.no_grad():
        conv = truncated(model, Tap("features.3", "features.3.weight"))(x)
        assert torch.equal(conv, model.features(x))
        h = F.relu(model.features(x))
        h = h + F.relu(model.gate(h)) if h.mean() > 0.05 else h
        fc1 = truncated(model, Tap("fc1", "fc1.weight"))(x)
        assert torch.allclose(fc1, model.fc1(F.adaptive_avg_pool2d(h, 1).flatten(1)))
    assert ran_after == []  # nothing above the tap ran
    assert model.fc3._forward_hooks and not model.features[3]._forward_hooks  # the tap's own hook was removed


def test_params_up_to_follow_what_the_output_depends_on():
    model = gated()
    conv = params_up_to(model, Tap("features.3", "features.3.weight"), size=16)
    assert set(conv) == {"features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"}
    with torch.no_grad():  # make the branch run, then the gate is a parameter below fc1
        model.features[3].bias.fill_(1.0)
    fc1 = params_up_to(model, Tap("fc1", "fc1.weight"), size=16)
    assert {"gate.weight", "fc1.weight", "fc1.bias"} <= set(fc1)
    assert not {"fc3.weight", "fc3.bias"} & set(fc1)


def test_torchvision_arch_with_default_and_explicit_taps():
    info = resolve_arch("torchvision:resnet34")
    assert info.input_size == 224 and info.family == "resnet"
    assert {layer: tap.node for layer, tap in info.taps.items()} == {"conv": "layer4.2.conv2", "fc3": "fc"}
    info = resolve_arch("torchvision:resnet34", "conv=layer3.5.conv2,fc1=layer4.0.conv1:layer4.0.conv1.weight", 64)
    assert info.input_size == 64
    assert {layer: (tap.node, tap.weight) for layer, tap in info.taps.items()} == {
        "conv": ("layer3.5.conv2", "layer3.5.conv2.weight"), "fc1": ("layer4.0.conv1", "layer4.0.conv1.weight")}
    model = info.build(num_classes=5)
    assert model.fc.out_features == 5  # the head resized to the classes
    assert parse_taps(taps_text(info.taps)) == info.taps


def test_module_factory_arch():
    info = resolve_arch(GATED, "conv=features.3,fc1=fc1,fc3=fc3", 32)
    assert info.family == "other" and info.input_size == 32
    assert list(info.taps) == ["conv", "fc1", "fc3"]
    assert isinstance(info.build(num_classes=4), GatedNet)


@pytest.mark.parametrize("arch, taps, expected", [
    ("torchvision:no_such_net", None, "torchvision has no classification model 'no_such_net'"),
    ("no_such_module_xyz:factory", None, "cannot import 'no_such_module_xyz'"),
    ("tests.user_models:missing", None, "has no callable 'missing'"),
    ("tests.user_models:GatedNet.forward", None, "has no callable"),
    (GATED, "conv=features.9", "--taps conv: tests.user_models:gated_net has no submodule 'features.9'"),
    (GATED, "conv=features.3:fc1.weight_x", "has no parameter 'fc1.weight_x'"),
    (GATED, "fc4=fc1", "--taps"),
    (GATED, "conv", "--taps"),
    ("vgg_tiny", "conv=net.features.9", "--taps applies to torchvision:/timm:/module: architectures"),
    ("torchvision:resnet18", "conv=layer5.add:layer4.0.conv2.weight",
     "--taps conv: torchvision:resnet18 has no submodule or graph node 'layer5.add' (closest: 'layer4.1.add', "
     "'layer4.0.add', 'layer3.1.add')"),
    ("torchvision:resnet18", "conv=layer4.0.conv2:layer4.0.conv2.wieght",
     "has no parameter 'layer4.0.conv2.wieght' (closest: 'layer4.0.conv2.weight'"),
    ("tests.test_own_models:classes_positional", None,
     "kdq calls the factory as factory(num_classes=C), but its signature (classes) has no num_classes parameter"),
])
def test_bad_arch_or_taps_is_one_user_error(arch, taps, expected):
    with pytest.raises(UserError) as err:
        resolve_arch(arch, taps)
    assert expected in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("taps, weight", [
    ("conv=layer4.0.add", "layer4.0.conv2.weight"),  # a graph node: the conv before it (through bn2)
    # (the block's ReLU module runs twice; its first call, which the hook reads too, follows conv1)
    ("conv=layer4.0.relu", "layer4.0.conv1.weight"),
])
def test_a_tap_without_a_weight_of_its_own_takes_the_conv_before_it(taps, weight, caplog):
    with caplog.at_level("INFO"):
        info = resolve_arch("torchvision:resnet18", taps)
    assert info.taps["conv"].weight == weight
    assert f"its weight distance is {weight}'s" in caplog.text  # said, and recorded in the run's taps


def test_a_graph_node_without_a_conv_before_it_must_name_its_weight():
    with pytest.raises(UserError, match=r"no conv or linear layer precedes it: name the weight whose distance is "
                                        r"recorded, conv=x:<parameter>"):
        resolve_arch("torchvision:resnet18", "conv=x")


def test_a_graph_node_tap_on_the_command_line():
    info = resolve_arch("torchvision:resnet18", "conv=layer4.0.add:layer4.0.conv2.weight,fc3=fc", 32)
    assert info.taps["conv"] == Tap("layer4.0.add", "layer4.0.conv2.weight")
    torch.manual_seed(0)
    model = info.build(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the residual sum before the block's ReLU, computed by hand
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        h = model.layer3(model.layer2(model.layer1(h)))
        block = model.layer4[0]
        expected = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h))))) + block.downsample(h)
        torch.testing.assert_close(truncated(model, info.taps["conv"])(x), expected)
    assert not isinstance(truncated(model, Tap("layer4.0.bn2", "layer4.0.bn2.weight")), torch.fx.GraphModule)


def test_module_factories_get_num_classes_by_keyword():
    info = resolve_arch("tests.test_own_models:pretrained_first", "conv=0,fc3=3", 16)
    assert info.build(num_classes=5)[3].out_features == 5  # 5 went to num_classes, not to pretrained


@needs_timm
def test_timm_arch_is_built_fresh_with_the_classes_by_keyword(monkeypatch):
    import timm

    calls = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    info = resolve_arch("timm:resnet10t", "conv=layer4.0.add:layer4.0.conv2.weight,fc3=fc", 64)
    assert info.input_size == 64 and info.taps["conv"] == Tap("layer4.0.add", "layer4.0.conv2.weight")
    model = info.build(num_classes=5)
    assert model.fc.out_features == 5
    assert calls and all(a == ("resnet10t",) and kw == {"pretrained": False, "num_classes": 5 if i else 2}
                         for i, (a, kw) in enumerate(calls))  # the meta probe (2 classes), then the model
    # timm's own factory module works too, called by keyword (a positional call read 5 as pretrained=5: a download)
    assert resolve_arch("timm.models:resnet10t").build(num_classes=5).fc.out_features == 5


@needs_timm
def test_unknown_timm_model_is_one_line_with_the_closest_names():
    with pytest.raises(UserError, match=r"^--arch: timm has no model 'resnet10x' \(closest: resnet10t"):
        resolve_arch("timm:resnet10x")


def test_timm_missing_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError, as where it is not installed
    with pytest.raises(UserError) as err:
        resolve_arch("timm:resnet10t")
    assert str(err.value) == "--arch: timm is not installed: pip install timm (or, in a checkout, pip install -e .[timm])"


# ---- the kinds of model through all four stages (slow) ---------------------------------------------------

OWN_MODELS = {
    # kind: (--arch, --taps, --image-size, layer distilled and analysed, rows of weight_diff.npy recorded)
    "torchvision_resnet34": ("torchvision:resnet34", "conv=layer3.5.conv2,fc3=fc", 64, "conv", {"conv", "fc3"}),
    "torchvision_mobilenet": ("torchvision:mobilenet_v3_small", None, 64, "conv", {"conv", "fc3"}),
    "user_module": (GATED, "conv=features.3,fc1=fc1,fc3=fc3", 32, "fc1", {"conv", "fc1", "fc3"}),
    # timm's test-sized ResNet, its conv layer a graph node: the residual sum before the last block's ReLU (timm
    # zero-initialises the block's last BatchNorm, so a tap at layer4.0.bn2 would read 0 at epoch 0)
    "timm_resnet_graph_node": ("timm:test_resnet", "conv=layer4.0.add:layer4.0.conv2.weight,fc3=fc", 32, "conv",
                               {"conv", "fc3"}),
}
COMMON = ("--batch-size", 8, "--lr", 0.01, "--device", "cpu", "--val-split", "val", "--no-progress")
FIT = ("--split", "train", "--pic-num", 4, "--effect-num", 4, "--samples", 4, "--steps", 4, "--break-steps", 1,
       "--grid", 4, "--effective-rule", "off", "--batch-images", 2, "--no-progress", "--device", "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param(kind, marks=needs_timm) if kind.startswith("timm") else kind
                                  for kind in sorted(OWN_MODELS)])
def test_own_model_through_all_four_stages(kind, tiny_data, tmp_path, one_thread):
    import json
    import math

    import numpy as np

    from kdq.function.metrics.measures import METRICS
    from kdq.models import LAYERS
    from tests.helpers import run_script

    arch, taps, size, layer, recorded = OWN_MODELS[kind]
    model_flags = ("--arch", arch, *(("--taps", taps) if taps else ()), "--image-size", size)
    runs, data = tmp_path / "runs", ("--data", tiny_data)
    assert run_script("train_net/train_net.py", *model_flags, *COMMON, *data, "--split", "teacher", "--epochs", 1,
                      "--checkpoints", 1, "--out", runs / "teacher") == 0
    assert run_script("train_net/train_net.py", *model_flags, *COMMON, *data, "--split", "train", "--epochs", 2,
                      "--checkpoints", 0, 1, 2, "--out", runs / "label") == 0
    # the teacher's arch, taps and size come from its run.json; the student's are given
    assert run_script("distillation/distillation.py", "--teacher_checkpoint", runs / "teacher" / "1.pth.tar",
                      *model_flags, *COMMON, *data, "--split", "train", "--layer", layer, "--epochs", 2,
                      "--finetune-epochs", 1, "--checkpoints", 0, 1, 2, "--out", runs / "distil") == 0
    for net in ("label", "distil"):
        record = json.loads((runs / net / "run.json").read_text())["model"]
        assert record["arch"] == arch and record["image_size"] == size
        assert set(t.split("=")[0] for t in record["taps"].split(",")) == recorded
        wd = np.load(runs / net / "weight_diff.npy")
        for row, name in enumerate(LAYERS):
            assert np.isnan(wd[row]).all() != (name in recorded), (net, name)
        # the sigma stage takes arch, taps and size from the run it fits
        assert run_script("sigma/train_sigma.py", "--checkpoint_root", runs / net, "--layer", layer, *FIT, *data,
                          "--out", runs / f"sigma_{net}") == 0
        assert json.loads((runs / f"sigma_{net}" / "run.json").read_text())["model"]["arch"] == arch
    assert run_script("sigma/find_knowledge_new.py", "--label-sigma", runs / "sigma_label",
                      "--distil-sigma", runs / "sigma_distil", *data, "--split", "train", "--layer", layer,
                      "--bootstrap", 20, "--no-figures", "--out", runs / "metrics") == 0
    rows = {row["metric"]: row for row in json.loads((runs / "metrics" / "metrics.json").read_text())["table"]}
    for metric in METRICS:
        for net in ("label", "distil"):
            assert math.isfinite(float(rows[metric.key][net])), (metric.key, net)


def test_pretrained_torchvision_weights_load_into_the_backbone_and_the_head_stays_fresh():
    import torchvision

    from kdq.models import check_pretrained, load_pretrained

    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(num_classes=1000).state_dict()  # a file the user downloaded
    info = resolve_arch("torchvision:resnet18", image_size=64)
    check_pretrained(info, 7, imagenet)
    torch.manual_seed(1)
    model = info.build(num_classes=7)
    fresh_fc = model.fc.weight.detach().clone()
    load_pretrained(model, info, imagenet)
    assert torch.equal(model.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])
    assert torch.equal(model.fc.weight, fresh_fc) and model.fc.out_features == 7
    with pytest.raises(ValueError):
        check_pretrained(info, 7, {k: v for k, v in imagenet.items() if not k.startswith("layer4")})
