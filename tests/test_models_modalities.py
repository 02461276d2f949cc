"""The registry's nets for token sequences (transformer_tiny, bilstm_tiny) and point clouds (pointnet_tiny,
dgcnn_tiny): they build, padding and point order do not change their output, every tap reads the pre-activation
input of a ReLU, noise injected at ``embed`` reaches the conv tap, and the truncated forward uses only the
parameters below its tap."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from kdq.models import (ARCH_MODALITY, ARCH_NAMES, ARCHS, LAYERS, MODALITIES, build_model, feature_fn, params_up_to,
                        state_keys_up_to)

TEXT = ("transformer_tiny", "bilstm_tiny")
POINTS = ("pointnet_tiny", "dgcnn_tiny")
CLASSES = 5
# the module whose input each tap's output is (a ReLU, so the tap is a pre-activation), per net and layer
NEXT_RELU = {"conv": {"transformer_tiny": "act", "bilstm_tiny": "act", "pointnet_tiny": "features.5",
                      "dgcnn_tiny": "act"},
             "fc1": "classifier.1", "fc2": "classifier.4"}
# (B, feature...) of each tap for a batch of B = 3 sequences of L = 10 or clouds of P = 20 points
TAP_SHAPES = {"text": {"conv": (3, 10, 64), "fc1": (3, 64), "fc2": (3, 64), "fc3": (3, CLASSES)},
              "points": {"conv": (3, 128, 20), "fc1": (3, 128), "fc2": (3, 128), "fc3": (3, CLASSES)}}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def built(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=CLASSES).eval()


def sentences(batch: int = 3, length: int = 10, seed: int = 1) -> torch.Tensor:
    """Token ids in 1..63, row b ending in b padding ids."""
    ids = torch.randint(1, 64, (batch, length), generator=torch.Generator().manual_seed(seed))
    for b in range(batch):
        ids[b, length - b:] = 0
    return ids


def clouds(batch: int = 3, points: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, points, 3, generator=torch.Generator().manual_seed(seed))


def hooked(module: nn.Module, hook, run):
    """``run()`` with ``hook`` on ``module``'s forward (removed afterwards)."""
    handle = module.register_forward_hook(hook)
    try:
        return run()
    finally:
        handle.remove()


def inputs(name: str) -> torch.Tensor:
    return sentences() if name in TEXT else clouds()


def test_the_registry_entries():
    assert set(ARCH_MODALITY) == set(ARCH_NAMES) and set(ARCH_MODALITY.values()) == set(MODALITIES)
    for name in (*TEXT, *POINTS):
        info = ARCHS[name]
        assert info.family == "other" and set(info.taps) == set(LAYERS)
        assert (info.modality, info.inject) == (("text", "embed") if name in TEXT else ("points", None))
        assert info.input_size == (64 if name in TEXT else 128)
    assert (ARCHS["vgg_tiny"].modality, ARCHS["vgg_tiny"].inject) == ("image", None)


@pytest.mark.parametrize("name", [*TEXT, *POINTS, "vgg_tiny"])
def test_example_input_has_the_right_kind_and_is_seeded(name):
    info = ARCHS[name]
    x = info.example_input(4)
    assert torch.equal(x, info.example_input(4))
    if info.modality == "text":
        assert x.shape == (4, 64) and x.dtype == torch.int64 and int(x.max()) < 64
        lengths = (x != 0).sum(1)
        assert lengths.tolist() == [64, 56, 48, 40]  # 64 - b·64 // 8
        assert all(bool((row[:n] != 0).all()) for row, n in zip(x, lengths))  # padding at the end only
    elif info.modality == "points":
        assert x.shape == (4, 128, 3) and x.is_floating_point()
    else:
        assert x.shape == (4, 3, 64, 64)
    with torch.no_grad():
        assert built(name)(x).shape == (4, CLASSES)


@pytest.mark.parametrize("name", [*TEXT, *POINTS])
def test_builds_gives_logits_and_backward_reaches_every_parameter(name):
    model = built(name).train()
    out = model(inputs(name))
    assert out.shape == (3, CLASSES) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_seeded_builds_are_identical():
    for name in (*TEXT, *POINTS):
        a, b = built(name, seed=3).state_dict(), built(name, seed=3).state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), name


def test_text_builder_options():
    torch.manual_seed(0)
    model = build_model("transformer_tiny", CLASSES, vocab_size=100, max_length=12)
    assert model.embed.num_embeddings == 100 and model.embed.padding_idx == 0
    assert model.position.num_embeddings == 12
    assert build_model("bilstm_tiny", CLASSES, vocab_size=7).embed.num_embeddings == 7
    fixed = dataclasses.replace(ARCHS["bilstm_tiny"], options={"vocab_size": 9, "max_length": 5})  # as a stage does
    assert fixed.build(CLASSES).embed.num_embeddings == 9 and fixed.build(CLASSES).max_length == 5
    assert fixed.build(CLASSES, vocab_size=11).embed.num_embeddings == 11  # a call's option wins
    with pytest.raises(ValueError, match=r"vgg_tiny takes no option vocab_size \(its options: none\)"):
        build_model("vgg_tiny", CLASSES, vocab_size=100)
    with pytest.raises(ValueError, match="takes no option depth"):
        build_model("bilstm_tiny", CLASSES, depth=3)
    with pytest.raises(ValueError, match="vocab_size must be at least 2"):
        build_model("bilstm_tiny", CLASSES, vocab_size=1)


@pytest.mark.parametrize("name", TEXT)
def test_bad_token_ids_are_one_line_errors(name):
    model = build_model(name, CLASSES, max_length=4)
    with pytest.raises(ValueError, match="more than this net's max_length 4"):
        model(torch.tensor([[1, 2, 3, 4, 5]]))
    with pytest.raises(ValueError, match="only padding"):
        model(torch.tensor([[1, 2, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.rand(2, 3))


@pytest.mark.parametrize("name", POINTS)
def test_bad_points_are_one_line_errors(name):
    with pytest.raises(ValueError, match=r"shape \(B, P, 3\), not \(2, 5, 2\)"):
        built(name)(torch.randn(2, 5, 2))


@pytest.mark.parametrize("grad", [False, True])  # no_grad takes PyTorch's fused transformer path in eval mode
@pytest.mark.parametrize("name", TEXT)
def test_padding_does_not_change_a_sentence(name, grad):
    model = built(name)
    with torch.no_grad():  # as after training: the conv tap's bias (its output at padded positions) is not 0
        model.proj.bias.copy_(torch.linspace(-1.0, 2.0, model.proj.bias.numel()))
    ids = torch.tensor([[5, 9, 2, 7, 0, 0], [3, 0, 0, 0, 0, 0]])
    longer = torch.cat([ids, torch.zeros(2, 4, dtype=ids.dtype)], 1)  # padded to L + 4
    front = torch.tensor([[0, 0, 5, 9, 2, 7], [0, 0, 0, 0, 0, 3]])  # the same sentences padded in front
    alone = torch.tensor([[5, 9, 2, 7]])  # the first one, no padding at all
    with torch.set_grad_enabled(grad):
        out = model(ids)
        torch.testing.assert_close(model(longer), out, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(front), out, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(alone), out[:1], rtol=0, atol=1e-6)
    assert not torch.allclose(out[0], out[1])  # different sentences do differ


@pytest.mark.parametrize("name", TEXT)
def test_noise_on_padded_positions_changes_nothing(name):
    model = built(name)
    ids = sentences()
    pad = (ids == 0).unsqueeze(-1)

    def noisy_padding(module, args, output):
        return output + pad * torch.randn(output.shape, generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        clean = model(ids)
        noisy = hooked(model.embed, noisy_padding, lambda: model(ids))
    torch.testing.assert_close(noisy, clean, rtol=0, atol=1e-6)


def test_pointnet_does_not_depend_on_the_order_of_points():
    model = built("pointnet_tiny")
    x = clouds()
    shuffled = x[:, torch.randperm(20, generator=torch.Generator().manual_seed(4))]
    with torch.no_grad():
        torch.testing.assert_close(model(shuffled), model(x), rtol=0, atol=1e-6)


def test_dgcnn_does_not_depend_on_the_order_of_points():
    model = built("dgcnn_tiny")
    x = clouds(points=32)
    order = torch.randperm(32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model(x[:, order]), model(x), rtol=0, atol=1e-5)
        conv = feature_fn(model, "dgcnn_tiny", "conv")
        torch.testing.assert_close(conv(x[:, order]), conv(x)[:, :, order], rtol=0, atol=1e-5)


def test_dgcnn_neighbours_by_hand():
    from kdq.models.points import nearest

    line = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [7, 0, 0]]])  # points on a line at 0, 1, 3, 7
    assert nearest(line, 2).tolist() == [[[0, 1], [1, 0], [2, 1], [3, 2]]]


def test_edgeconv_by_hand():
    from kdq.models.points import EdgeConv

    edge = EdgeConv(3, 1, k=2)
    with torch.no_grad():
        edge.edge.weight.copy_(torch.tensor([[0.0, 0, 0, -1, 0, 0]]))  # −(x_j − x_i) along the first axis
        edge.edge.bias.zero_()
        line = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [7, 0, 0]]])
        # neighbours (itself first): 0 → 0, 1; 1 → 1, 0; 2 → 2, 1; 3 → 3, 2; the max over ReLU(x_i − x_j)
        assert edge(line).flatten().tolist() == [0.0, 1.0, 2.0, 4.0]


def test_dgcnn_second_graph_is_on_the_first_edgeconvs_features():
    model = built("dgcnn_tiny")
    seen = {}
    model.edge1.register_forward_hook(lambda m, args, out: seen.setdefault("edge1", out))
    model.edge2.register_forward_hook(lambda m, args, out: seen.setdefault("edge2", args[0]))
    with torch.no_grad():
        model(clouds())
    assert seen["edge2"] is seen["edge1"] and seen["edge1"].shape == (3, 20, 32)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("name", [*TEXT, *POINTS])
def test_each_tap_is_the_pre_activation_before_a_relu(name, layer):
    model = built(name)
    x = inputs(name)
    with torch.no_grad():
        feature = feature_fn(model, name, layer)(x)
        assert tuple(feature.shape) == TAP_SHAPES[ARCHS[name].modality][layer]
        if layer == "fc3":  # the logits: no ReLU follows
            torch.testing.assert_close(feature, model(x))
            return
        assert (feature < 0).any()
        relu = NEXT_RELU[layer][name] if layer == "conv" else NEXT_RELU[layer]
        seen = []
        handle = model.get_submodule(relu).register_forward_hook(lambda m, args, out: seen.append(args[0]))
        try:
            model(x)
        finally:
            handle.remove()
    assert isinstance(model.get_submodule(relu), nn.ReLU) and len(seen) == 1
    torch.testing.assert_close(feature, seen[0], rtol=0, atol=0)


def test_pointnet_conv_tap_by_hand():
    model = built("pointnet_tiny")
    x = clouds()
    f = model.features
    with torch.no_grad():
        hand = f[4](torch.relu(f[2](torch.relu(f[0](x.transpose(1, 2))))))
        torch.testing.assert_close(feature_fn(model, "pointnet_tiny", "conv")(x), hand)


@pytest.mark.parametrize("name", TEXT)
def test_noise_injected_at_embed_reaches_the_conv_tap(name):
    model = built(name)
    ids = sentences()
    conv = feature_fn(model, name, "conv")
    calls = []

    def noisy(module, args, output):
        calls.append(1)
        return output + 0.5 * torch.randn(output.shape, generator=torch.Generator().manual_seed(3))

    assert model.get_submodule(ARCHS[name].inject) is model.embed
    with torch.no_grad():
        clean = conv(ids)
        dirty = hooked(model.embed, noisy, lambda: conv(ids))
        again = conv(ids)
    assert calls == [1]
    torch.testing.assert_close(again, clean, rtol=0, atol=0)
    tokens = ids != 0
    assert (dirty - clean)[tokens].abs().min() > 0  # every token's feature moved
    torch.testing.assert_close(dirty[~tokens], clean[~tokens], rtol=0, atol=0)  # padded positions: only the bias


POINTNET_CONV = ["features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
                 "features.4.weight", "features.4.bias"]
DGCNN_CONV = ["edge1.edge.weight", "edge1.edge.bias", "edge2.edge.weight", "edge2.edge.bias", "fuse.weight",
              "fuse.bias"]


@pytest.mark.parametrize("name", [*TEXT, *POINTS])
def test_params_up_to_lists_only_parameters_below_the_tap(name):
    model = built(name)
    info = ARCHS[name]
    example = info.example_input(2)
    conv = params_up_to(model, info.taps["conv"], example=example)
    if name == "pointnet_tiny":
        assert conv == POINTNET_CONV
    elif name == "dgcnn_tiny":
        assert conv == DGCNN_CONV
    else:
        assert conv[0] == "embed.weight" and conv[-2:] == ["proj.weight", "proj.bias"]
        assert not [n for n in conv if n.startswith("classifier.")]
        assert len(conv) == len([n for n, _ in model.named_parameters()]) - 6  # all but the head's 3 Linear
    fc1 = params_up_to(model, info.taps["fc1"], example=example)
    assert fc1 == conv + ["classifier.0.weight", "classifier.0.bias"]
    fc2 = params_up_to(model, info.taps["fc2"], example=example)
    assert fc2 == fc1 + ["classifier.3.weight", "classifier.3.bias"]
    assert state_keys_up_to(model, info.taps["conv"], example=example) == conv  # no BatchNorm: no buffers
