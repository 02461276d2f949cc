"""The method's family-dependent defaults (docs/method.md §1–§3) are written once, in ``kdq.models.FAMILIES``, and
every entry point resolves them from there: λ of the σ fit (the API and the sigma stage), the fine-tune learning
rate, the m̂ rule, and the family of a built model."""
from __future__ import annotations

import pytest
import torch
import torchvision

import kdq
from kdq.function.sigma.fit import SigmaConfig, SigmaFitter
from kdq.models import ARCH_NAMES, ARCHS, FAMILIES, MODELS, build_model, family_defaults, family_of

# docs/method.md: λ = 7 for VGG and AlexNet, 6 for ResNets; fine-tune lr 1e-3, 1e-2 for ResNets; m̂ ≠ epoch 0 for ResNets
PAPER = {"vgg": (7.0, 1e-3, False), "alexnet": (7.0, 1e-3, False), "resnet": (6.0, 1e-2, True),
         "other": (7.0, 1e-3, False)}


def test_the_table_is_the_papers():
    assert {f: (d.lam, d.finetune_lr, d.mhat_skip_epoch0) for f, d in FAMILIES.items()} == PAPER
    assert family_defaults(None) == family_defaults("mobilenet") == FAMILIES["other"]


def test_the_registry_names_are_written_once():
    assert tuple(ARCHS) == tuple(MODELS) == ARCH_NAMES


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_a_built_registry_model_has_its_entrys_family(name):
    with torch.device("meta"):
        model = build_model(name, num_classes=3)
    assert family_of(model) == ARCHS[name].family
    assert ARCHS[name].defaults == FAMILIES[ARCHS[name].family]


def test_family_of_torchvision_and_other_models():
    with torch.device("meta"):
        assert family_of(torchvision.models.resnet18(num_classes=3)) == "resnet"
        assert family_of(torchvision.models.resnext50_32x4d(num_classes=3)) == "resnet"
        assert family_of(torchvision.models.vgg11(num_classes=3)) == "vgg"
        assert family_of(torchvision.models.alexnet(num_classes=3)) == "alexnet"
        assert family_of(torchvision.models.mobilenet_v2(num_classes=3)) == "other"
    assert family_of(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))) == "other"


def _final_lambda(model, layer: str, **config) -> float:
    """λ after the decision of a 2-step fit whose target entropy no σ reaches: the starting λ times 1.5."""
    torch.manual_seed(0)
    images = torch.randn(1, 3, 64, 64)
    cfg = SigmaConfig(grid=4, samples=2, steps=2, break_steps=0, target_entropy=100.0, **config)
    return kdq.fit_sigma(model, layer, images, config=cfg)[0].final_lambda


def test_fit_sigma_on_a_resnet_starts_at_lambda_6_and_on_a_vgg_at_7():
    torch.manual_seed(0)
    resnet, vgg = build_model("resnet_tiny", num_classes=3), build_model("vgg_tiny", num_classes=3)
    assert _final_lambda(resnet, ARCHS["resnet_tiny"].taps["conv"].node) == pytest.approx(6.0 * 1.5)
    assert _final_lambda(vgg, ARCHS["vgg_tiny"].taps["conv"].node) == pytest.approx(7.0 * 1.5)
    assert _final_lambda(resnet, ARCHS["resnet_tiny"].taps["conv"].node, lam=5.0) == pytest.approx(5.0 * 1.5)


def test_the_config_resolves_lambda_by_family_once():
    assert SigmaConfig().lam is None
    assert SigmaConfig().resolved("resnet").lam == 6.0 and SigmaConfig().resolved("vgg").lam == 7.0
    assert SigmaConfig(lam=3.0).resolved("resnet").lam == 3.0
    fitter = SigmaFitter(lambda x: x, SigmaConfig())  # a bare feature function: the "other" family
    assert fitter.cfg.lam == 7.0


def test_timm_resnets_and_vggs_are_their_families():
    timm = pytest.importorskip("timm", reason="timm is an optional extra (pip install -e .[timm])")
    with torch.device("meta"):
        assert family_of(timm.create_model("resnet10t", pretrained=False, num_classes=3)) == "resnet"
        assert family_of(timm.create_model("vgg11", pretrained=False, num_classes=3)) == "vgg"
        assert family_of(timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=3)) == "other"
