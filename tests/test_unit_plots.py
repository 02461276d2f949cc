"""The figures of the entropy per token and per point (kdq.function.metrics.unit_plots): valid PNG, the same bytes
for the same input, padding that changes nothing, one-line errors for inputs that do not match."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from kdq.function.checks import CheckError
from kdq.function.metrics.unit_plots import point_entropy_figure, token_entropy_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPOCHS = {"label": [0, 5, 10], "distil": [0, 4, 8]}


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from the IHDR chunk, which follows the 8-byte signature."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def chunk_types(data: bytes) -> list[bytes]:
    types, at = [], 8
    while at < len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        types.append(data[at + 4:at + 8])
        at += 12 + length
    return types


def sentences(units: int = 6):
    """Two sentences (5 and 3 tokens), their (2, 3, units) entropies per net (NaN beyond each length)."""
    tokens = [["the", "red", "airplane", "takes", "off"], ["a", "small", "dog"]]
    foreground = [np.array([0, 0, 1, 0, 0], bool), np.array([0, 0, 1], bool)]
    rng = np.random.default_rng(0)
    entropies = {}
    for net in ("label", "distil"):
        H = np.full((2, 3, units), np.nan)
        for i, t in enumerate(tokens):
            H[i, :, :len(t)] = rng.normal(size=(3, len(t)))
        entropies[net] = H
    return tokens, entropies, foreground


def clouds():
    """Two clouds of 40 points, a shape of 10 points each, their (2, 3, 40) entropies per net."""
    rng = np.random.default_rng(1)
    points = rng.uniform(-1, 1, (2, 40, 3))
    foreground = np.zeros((2, 40), bool)
    foreground[:, :10] = True
    entropies = {net: rng.normal(size=(2, 3, 40)) for net in ("label", "distil")}
    return points, entropies, foreground


def padded(points, entropies, foreground, extra: int = 8):
    """The same clouds with ``extra`` more points, far away, NaN entropies, half of them foreground."""
    n = points.shape[0]
    far = np.full((n, extra, 3), 50.0)
    return (np.concatenate([points, far], axis=1),
            {net: np.concatenate([H, np.full((n, H.shape[1], extra), np.nan)], axis=2) for net, H in entropies.items()},
            np.concatenate([foreground, np.arange(extra)[None].repeat(n, 0) % 2 == 0], axis=1))


def test_token_figure_is_a_png_with_the_same_bytes_twice_and_no_date():
    tokens, entropies, foreground = sentences()
    first = token_entropy_figure(tokens, entropies, foreground, EPOCHS, names=["plane", "dog"])
    again = token_entropy_figure(tokens, entropies, foreground, EPOCHS, names=["plane", "dog"])
    assert first.startswith(PNG_SIGNATURE)
    assert first == again
    assert b"tIME" not in chunk_types(first) and b"Matplotlib" not in first


def test_token_padding_is_not_drawn_and_the_figure_grows_with_the_sentence():
    tokens, entropies, foreground = sentences(units=6)
    _, wide, _ = sentences(units=30)  # the same values, 24 more NaN units of padding
    base = token_entropy_figure(tokens, entropies, foreground, EPOCHS)
    assert token_entropy_figure(tokens, wide, foreground, EPOCHS) == base
    other = [~foreground[0], foreground[1]]
    assert token_entropy_figure(tokens, entropies, other, EPOCHS) != base  # the class words are marked
    longer = [tokens[0] + ["over", "the", "runway"] * 4, tokens[1]]  # 12 more tokens: wider than the minimum
    entropies_longer = {net: np.concatenate([H, np.zeros((2, 3, 12))], axis=2) for net, H in entropies.items()}
    for net in entropies_longer:
        entropies_longer[net][0, :, 5:17] = 0.5
    mask = [np.r_[foreground[0], np.zeros(12, bool)], foreground[1]]
    assert png_size(token_entropy_figure(longer, entropies_longer, mask, EPOCHS))[0] > png_size(base)[0]


def test_token_nan_inside_a_sentence_and_more_checkpoints_than_columns_are_drawn():
    tokens, entropies, foreground = sentences()
    entropies["label"][0, 1, 2] = np.nan
    epochs = {net: list(range(0, 90, 10)) for net in ("label", "distil")}
    many = {net: np.repeat(H, 3, axis=1) for net, H in entropies.items()}  # 9 checkpoints, 3 rows per net shown
    three = token_entropy_figure(tokens, many, foreground, epochs, max_columns=3)
    six = token_entropy_figure(tokens, many, foreground, epochs, max_columns=6)
    assert three.startswith(PNG_SIGNATURE)
    assert png_size(six)[1] > png_size(three)[1]  # more rows, a taller figure


@pytest.mark.parametrize("change, message", [
    (lambda t, e, f: (t, {n: H[:1] for n, H in e.items()}, f), "N = 2"),
    (lambda t, e, f: (t, e, [f[0][:4], f[1]]), r"foreground\[0\] must have shape \(5,\)"),
    (lambda t, e, f: (t, e, f[:1]), "1 masks for 2 sentences"),
    (lambda t, e, f: (t, {n: H[:, :, :4] for n, H in e.items()}, f), "fewer than the 5 tokens"),
    (lambda t, e, f: (t, {n: H[:, :2] for n, H in e.items()}, f), "has 3 epochs but"),
    (lambda t, e, f: (t, {"teacher": e["label"]}, f), "unknown nets"),
    (lambda t, e, f: (t, e, [np.array([0, 2, 0, 0, 0]), f[1]]), "boolean mask"),
    (lambda t, e, f: ([], e, f), "tokens is empty"),
    (lambda t, e, f: ([t[0], []], e, f), r"tokens\[1\] is empty"),
])
def test_token_inputs_that_do_not_match_are_one_line_errors(change, message):
    tokens, entropies, foreground = change(*sentences())
    with pytest.raises(ValueError, match=message) as err:
        token_entropy_figure(tokens, entropies, foreground, EPOCHS)
    assert "\n" not in str(err.value)


def test_token_max_columns_below_two_is_refused():
    with pytest.raises(CheckError, match="max_columns"):
        token_entropy_figure(*sentences(), EPOCHS, max_columns=1)


def test_point_figure_is_a_png_with_the_same_bytes_twice():
    points, entropies, foreground = clouds()
    first = point_entropy_figure(points, entropies, foreground, EPOCHS, names=["chair", "lamp"])
    assert first.startswith(PNG_SIGNATURE)
    assert first == point_entropy_figure(points, entropies, foreground, EPOCHS, names=["chair", "lamp"])
    assert b"tIME" not in chunk_types(first)
    # two rows (label, distil) per cloud; first and last checkpoint × two views = four panels a row
    width, height = png_size(first)
    one_view = point_entropy_figure(points, entropies, foreground, EPOCHS, views=((20, -60),))
    assert png_size(one_view)[0] < width and png_size(one_view)[1] == height


def test_point_padding_is_not_drawn_and_the_foreground_is():
    points, entropies, foreground = clouds()
    base = point_entropy_figure(points, entropies, foreground, EPOCHS)
    assert point_entropy_figure(*padded(points, entropies, foreground), EPOCHS) == base
    other = foreground.copy()
    other[0, 10:20] = True
    assert point_entropy_figure(points, entropies, other, EPOCHS) != base
    entropies["label"][0, 2, :5] = np.nan  # a few points without a value at the last checkpoint
    assert point_entropy_figure(points, entropies, foreground, EPOCHS).startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("change, message", [
    (lambda p, e, f: (p, {n: H[:1] for n, H in e.items()}, f), "N = 2"),
    (lambda p, e, f: (p, e, f[:, :30]), r"foreground must have shape \(2, 40\)"),
    (lambda p, e, f: (p, {n: H[:, :, :39] for n, H in e.items()}, f), "39 points per cloud"),
    (lambda p, e, f: (p[:, :, :2], e, f), r"points must have shape \(N, P, 3\)"),
    (lambda p, e, f: (p[:0], e, f), "points is empty"),
    (lambda p, e, f: (p, {}, f), "at least one of the nets"),
])
def test_point_inputs_that_do_not_match_are_one_line_errors(change, message):
    points, entropies, foreground = change(*clouds())
    with pytest.raises(ValueError, match=message) as err:
        point_entropy_figure(points, entropies, foreground, EPOCHS)
    assert "\n" not in str(err.value)


def test_point_views_must_be_pairs():
    with pytest.raises(CheckError, match="views"):
        point_entropy_figure(*clouds(), EPOCHS, views=())
