"""The registry: every architecture builds, its taps read the right tensors, and checkpoints of the
original code (``module.``-prefixed, docs/method.md §0 names) load."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from kdq.function.io.checkpoint import load_weights
from kdq.function.cli import UserError
from kdq.models import ARCH_MODALITY, ARCHS, LAYERS, MODELS, TAPS, analysed_weight, build_model, feature_fn, check_pretrained, load_pretrained, params_up_to
from kdq.models.resnet import ResNetKD

SMALL = 64  # every image architecture accepts 64 px (adaptive pooling), which keeps the paper nets cheap
# the architectures these tests feed images (the text and point-cloud nets: tests/test_models_modalities.py)
IMAGE_ARCHS = sorted(name for name in MODELS if ARCH_MODALITY[name] == "image")


def _module(model: nn.Module, path: str) -> nn.Module:
    return dict(model.named_modules())[path]


def hand_forward(model: nn.Module, arch: str, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The pre-activation output at ``layer`` computed by hand from the architecture's structure."""
    node = TAPS[arch][layer].node
    idx = int(node.rsplit(".", 1)[1])
    if isinstance(model, ResNetKD):
        n = model.net
        h = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        h = n.layer4(n.layer3(n.layer2(n.layer1(h))))
        if layer == "conv":
            return _first(model.features, idx)(h)
        h = torch.flatten(n.avgpool(model.features(h)), 1)
        return _first(n.fc, idx)(h)
    net = model.net
    if layer == "conv":
        return _first(net.features, idx)(x)
    h = torch.flatten(net.avgpool(net.features(x)), 1)
    return _first(net.classifier, idx)(h)


def _first(seq: nn.Sequential, idx: int) -> nn.Sequential:
    """Modules 0..idx of a Sequential, as a plain Sequential."""
    return nn.Sequential(*list(seq)[: idx + 1])


# resnet101/152 are resnet50 with more blocks in the same ResNetKD wrapper and the same taps; tracing them
# costs ~100 s of the suite's time for no code path that resnet50 does not already take.  They still get
# the forward and weight checks below.
DEEP_DUPLICATES = {"resnet101", "resnet152"}


@pytest.fixture(scope="module", params=IMAGE_ARCHS)
def built(request):
    torch.manual_seed(0)
    model = build_model(request.param, num_classes=5).eval()
    return request.param, model


def test_forward_gives_logits(built):
    arch, model = built
    with torch.no_grad():
        out = model(torch.randn(2, 3, SMALL, SMALL))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("layer", LAYERS)
def test_tap_matches_hand_forward_and_full_forward(built, layer):
    arch, model = built
    if arch in DEEP_DUPLICATES:
        pytest.skip("same wrapper and taps as resnet50 (tested there)")
    x = torch.randn(2, 3, SMALL, SMALL)
    captured = {}
    hook = _module(model, TAPS[arch][layer].node).register_forward_hook(
        lambda m, i, o: captured.setdefault("out", o.detach().clone()))
    with torch.no_grad():
        truncated_out = feature_fn(model, arch, layer)(x)
        model(x)
        hand = hand_forward(model, arch, layer, x)
    hook.remove()
    torch.testing.assert_close(truncated_out, hand)
    torch.testing.assert_close(truncated_out, captured["out"])
    assert (truncated_out < 0).any(), "a pre-activation tap should see negative values"


def test_fc3_is_the_logits(built):
    arch, model = built
    if arch in DEEP_DUPLICATES:
        pytest.skip("same wrapper and taps as resnet50 (tested there)")
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(feature_fn(model, arch, "fc3")(x), model(x))


def test_analysed_weights_exist_and_belong_to_the_tapped_module(built):
    arch, model = built
    sd = model.state_dict()
    for layer in LAYERS:
        tap = TAPS[arch][layer]
        assert tap.weight in sd
        w = analysed_weight(model, tap)
        assert w.dim() in (2, 4)
        assert tap.weight in params_up_to(model, tap)


def test_truncated_forward_uses_only_layers_up_to_the_tap(built):
    arch, model = built
    names = params_up_to(model, TAPS[arch]["fc1"])
    assert TAPS[arch]["fc1"].weight in names
    assert TAPS[arch]["fc2"].weight not in names and TAPS[arch]["fc3"].weight not in names
    conv_names = params_up_to(model, TAPS[arch]["conv"])
    assert TAPS[arch]["fc1"].weight not in conv_names


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    for arch in ("vgg_tiny", "vgg_tiny_bn", "resnet_tiny"):
        model = build_model(arch, num_classes=3)
        model(torch.randn(4, 3, 64, 64)).sum().backward()
        assert all(p.grad is not None for p in model.parameters()), arch


def test_unknown_arch_lists_known_ones():
    with pytest.raises(KeyError, match="vgg16"):
        build_model("vgg17", num_classes=3)


def test_initialisation_follows_spec():
    torch.manual_seed(0)
    model = build_model("vgg11", num_classes=10)
    fc = model.net.classifier[0]
    assert abs(fc.weight.std().item() - 0.01) < 1e-3 and fc.bias.abs().max() == 0
    conv = model.net.features[0]
    assert conv.bias.abs().max() == 0
    expected = (2.0 / (conv.out_channels * 9)) ** 0.5  # kaiming normal, fan_out, relu
    assert abs(conv.weight.std().item() - expected) / expected < 0.15


def test_seeded_builds_are_identical():
    a = (torch.manual_seed(3), build_model("resnet_tiny", 4))[1]
    b = (torch.manual_seed(3), build_model("resnet_tiny", 4))[1]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def original_resnet_state(arch: str, classes: int) -> dict[str, torch.Tensor]:
    """The state dict of the original code's ResNet<arch>_without_pretrained, from its documented shapes (not from
    kdq's model): torchvision's backbone as ``net.*`` without its fc; ``features`` = Conv(C, C, 3)-BN-ReLU-Conv-BN-ReLU;
    ``net.fc`` = Linear(C, W)-ReLU-Dropout-Linear(W, W)-ReLU-Dropout-Linear(W, classes), W = 4096 for resnet18 and
    2048 for resnet50/101/152 (C = 512 or 2048)."""
    C, W = (512, 4096) if arch == "resnet18" else (2048, 2048)
    g = torch.Generator().manual_seed(0)
    backbone = {f"net.{k}": torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                for k, v in getattr(tvm, arch)(weights=None).state_dict().items() if not k.startswith("fc.")}
    shapes = {"features.0.weight": (C, C, 3, 3), "features.0.bias": (C,), "features.3.weight": (C, C, 3, 3),
              "features.3.bias": (C,), "net.fc.0.weight": (W, C), "net.fc.0.bias": (W,), "net.fc.3.weight": (W, W),
              "net.fc.3.bias": (W,), "net.fc.6.weight": (classes, W), "net.fc.6.bias": (classes,)}
    for bn in ("features.1", "features.4"):
        shapes.update({f"{bn}.weight": (C,), f"{bn}.bias": (C,), f"{bn}.running_mean": (C,), f"{bn}.running_var": (C,)})
    state = {**backbone, **{k: torch.randn(v, generator=g) for k, v in shapes.items()}}
    state.update({f"{bn}.num_batches_tracked": torch.tensor(0) for bn in ("features.1", "features.4")})
    return state


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_original_code_checkpoint_loads(arch, tmp_path):
    """A checkpoint of the original code (DataParallel ``module.`` prefix) loads strictly, every tensor in place."""
    original = original_resnet_state(arch, classes=7)
    sd = {f"module.{k}": v for k, v in original.items()}
    torch.save({"epoch": 3, "state_dict": sd, "best_acc1": 12.5, "optimizer": {}}, tmp_path / "3.pth.tar")
    target = build_model(arch, num_classes=7)
    load_weights(target, tmp_path / "3.pth.tar", arch)
    loaded = target.state_dict()
    assert set(loaded) == set(original)
    for k, v in original.items():
        assert torch.equal(loaded[k], v), k


def test_checkpoint_of_another_arch_is_refused(tmp_path):
    torch.save({"state_dict": build_model("vgg_tiny", 4).state_dict()}, tmp_path / "0.pth.tar")
    with pytest.raises(UserError, match="does not fit --arch resnet_tiny"):
        load_weights(build_model("resnet_tiny", 4), tmp_path / "0.pth.tar", "resnet_tiny")


def test_pretrained_backbone_keeps_weights_and_fresh_head():
    torch.manual_seed(5)
    tv = tvm.vgg11(weights=None)  # torchvision format, 1000 classes
    torch.manual_seed(6)
    model = build_model("vgg11", num_classes=4, pretrained=tv.state_dict())
    assert torch.equal(model.net.features[0].weight, tv.features[0].weight)
    # as the original: the whole classifier (fc1, fc2 and fc3) starts fresh, N(0, 0.01)
    for i in (0, 3):
        assert not torch.equal(model.net.classifier[i].weight, tv.classifier[i].weight)
        assert abs(model.net.classifier[i].weight.std().item() - 0.01) < 1e-3
    assert model.net.classifier[6].weight.shape == (4, 4096)
    kept = build_model("vgg11", num_classes=4, pretrained=tv.state_dict(), keep_head=True)  # --keep-pretrained-head
    assert torch.equal(kept.net.classifier[0].weight, tv.classifier[0].weight)
    assert torch.equal(kept.net.classifier[3].weight, tv.classifier[3].weight)
    assert kept.net.classifier[6].weight.shape == (4, 4096)


def test_pretrained_with_wrong_keys_is_refused():
    state = tvm.resnet18(weights=None).state_dict()
    with pytest.raises(ValueError, match="do not fit vgg11"):
        load_pretrained(build_model("vgg11", 4), "vgg11", state)
    with pytest.raises(ValueError, match="do not fit vgg11"):
        check_pretrained("vgg11", 4, state)  # the same check before a stage writes anything
    with pytest.raises(ValueError, match="not a state dict"):
        check_pretrained("vgg11", 4, [1, 2])


def test_every_image_arch_has_a_family_and_input_size():
    for name in IMAGE_ARCHS:
        info = ARCHS[name]
        assert info.family in {"vgg", "alexnet", "resnet"}
        assert set(info.taps) == set(LAYERS)
        assert info.input_size in (64, 224, 227)
