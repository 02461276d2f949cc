"""The embedded dataset: deterministic, exact masks, disjoint splits, docs/method.md §4 layout; the folder dataset."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from kdq.function.cli import UserError
from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.synthetic import write_dataset
from kdq.function.data.masks import central_square, mask_to_grid
from kdq.function.data.synthetic import class_names, class_table, image_rng, render, render_scene


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kw = dict(size=24, num_classes=3, per_class={"teacher": 2, "train": 1, "val": 1})
    write_dataset(tmp_path / "a", seed=7, **kw)
    write_dataset(tmp_path / "b", seed=7, **kw)
    write_dataset(tmp_path / "c", seed=8, **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize("label", range(8))
def test_mask_is_exactly_the_drawn_object(label):
    image, mask, scene = render_scene(image_rng(0, "train", label), label, 8, 64)
    changed = (image != scene).any(-1)
    assert mask.any() and (~mask).any()
    assert not changed[~mask].any(), "pixels outside the mask were changed by the object"
    assert changed[mask].mean() > 0.99, "the object must show on (almost) every mask pixel"


def test_object_colour_follows_its_class():
    reds = [render(image_rng(1, "train", i), 0, 8, 64) for i in range(5)]
    blues = [render(image_rng(1, "train", i), 2, 8, 64) for i in range(5)]
    assert class_table(8)[0] == ("disk", 0) and class_table(8)[2] == ("disk", 1)
    for (img, m) in reds:
        r, g, b = img[m].astype(float).mean(0)
        assert r > b
    for (img, m) in blues:
        r, g, b = img[m].astype(float).mean(0)
        assert b > r


def test_layout_and_splits_do_not_overlap(tiny_data):
    names = class_names(4)
    for split in ("teacher", "train", "val"):
        ds = MaskedImageFolder(tiny_data, split, require_masks=True)
        assert ds.classes == names
        assert all(ds.mask(i) is not None for i in range(len(ds)))
    hashes = {split: {p.read_bytes() for p in (tiny_data / split).rglob("*.png")} for split in ("teacher", "train", "val")}
    assert not hashes["teacher"] & hashes["train"]
    assert not hashes["train"] & hashes["val"]
    assert not hashes["teacher"] & hashes["val"]


def test_folder_dataset_errors(tiny_data, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        MaskedImageFolder(tmp_path / "absent", "train")
    with pytest.raises(UserError, match="splits here: .*teacher"):
        MaskedImageFolder(tiny_data, "nosuchsplit")
    root = tmp_path / "ds"
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "b").mkdir(parents=True)
    src = next((tiny_data / "train" / class_names(4)[0]).iterdir())
    (root / "train" / "a" / "x.png").write_bytes(src.read_bytes())
    with pytest.raises(UserError, match="has no images"):
        MaskedImageFolder(root, "train")
    (root / "train" / "b" / "y.png").write_bytes(src.read_bytes())
    assert len(MaskedImageFolder(root, "train")) == 2
    with pytest.raises(UserError, match="have no mask"):
        MaskedImageFolder(root, "train", require_masks=True)


def test_exact_mask_to_grid_is_nearest_of_the_thresholded_mask():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:4, 0:4] = True
    grid = mask_to_grid(mask, size=16, grid=4, exact=True)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0:2, 0:2] = True
    assert np.array_equal(grid, expected)
    # a mask of another size is first resized to S×S
    big = np.kron(mask, np.ones((3, 3), dtype=bool))
    assert np.array_equal(mask_to_grid(big, size=16, grid=4, exact=True), expected)


def test_default_mask_rule_widens_the_mask_by_the_bilinear_resize():
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:24, 0:8] = True
    # by hand: doubled to 64 px bilinearly, rows 15..48 and columns 0..16 get a value > 0 (row 48 samples
    # source row 23.75: 0.25 × 255 ≈ 64); the 4×4 grid samples pixels 0, 16, 32, 48 → rows 1..3, columns 0..1
    expected = np.zeros((4, 4), dtype=bool)
    expected[1:4, 0:2] = True
    assert np.array_equal(mask_to_grid(mask, 64, 4), expected)
    exact = np.zeros((4, 4), dtype=bool)
    exact[1:3, 0] = True
    assert np.array_equal(mask_to_grid(mask, 64, 4, exact=True), exact)


def original_cells(values: np.ndarray, S: int, g: int, pad: float = 1.0) -> np.ndarray:
    """The original code's foreground cells through its own calls (train_sigma.py / find_knowledge_new.py):
    [VOC: pad into a float64 array, Image.fromarray], transforms.Resize((S, S)), ToTensor,
    F.interpolate(size=g, mode='nearest'), > 0."""
    import torch.nn.functional as F
    from PIL import Image
    from torchvision import transforms as T

    if pad != 1.0:
        h, w = values.shape
        seg = np.zeros((int(h * pad), int(w * pad)))
        a, b = int((seg.shape[0] - h) / 2), int((seg.shape[1] - w) / 2)
        seg[a:a + h, b:b + w] = values
        image = Image.fromarray(seg)
    else:
        image = Image.fromarray(values).convert("L")
    t = T.Compose([T.Resize((S, S)), T.ToTensor()])(image).squeeze()
    return (F.interpolate(t[None, None].float(), size=g, mode="nearest").squeeze() > 0).numpy()


def test_mask_rule_matches_the_original_pipeline_on_many_masks():
    rng = np.random.default_rng(0)
    differ = 0
    for i in range(60):
        h, w = rng.integers(20, 90, size=2)
        values = np.zeros((h, w), dtype=np.uint8)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        values[y0:y0 + rng.integers(3, h // 2), x0:x0 + rng.integers(3, w // 2)] = rng.choice([51, 255])
        for S, g, pad in ((64, 16, 1.0), (224, 16, 1.0), (227, 16, 1.0), (64, 16, 1.2)):
            ours = mask_to_grid(values, S, g, pad=pad)
            assert np.array_equal(ours, original_cells(values, S, g, pad)), (i, S, g, pad)
        differ += not np.array_equal(mask_to_grid(values, 64, 16), mask_to_grid(values, 64, 16, exact=True))
    assert differ >= 20  # the bilinear step widens many of these masks by a cell


@pytest.mark.parametrize("g, first, last", [(12, 2, 10), (16, 2, 13), (18, 3, 15), (24, 4, 20)])
def test_central_square_is_the_originals(g, first, last):
    m = central_square(g)
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    assert rows.tolist() == cols.tolist() == list(range(first, last + 1))
    assert m.sum() == (last - first + 1) ** 2 and m[first:last + 1, first:last + 1].all()


# ---- reading one file (kdq.function.data.files): by value, never silently wrong ------------------------------

def test_palette_mask_is_read_by_index_not_colour(tmp_path):
    from kdq.function.data.files import read_mask

    index = np.zeros((6, 6), np.uint8)
    index[2:4, 1:5] = 1
    mask = Image.fromarray(index, "P")
    mask.putpalette([0, 0, 0] * 256)  # every index drawn black: by colour this mask is all background
    mask.save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png") > 0, index > 0)


@pytest.mark.parametrize("mode, background, pixel", [("LA", (0, 255), (200, 255)), ("RGBA", (0, 0, 0, 255), (90, 90, 90, 255)),
                                                     ("RGB", (0, 0, 0), (0, 0, 7)), ("1", 0, 1)])
def test_opaque_la_rgba_rgb_and_bilevel_masks_read_by_value(tmp_path, mode, background, pixel):
    from kdq.function.data.files import read_mask

    img = Image.new(mode, (4, 4), background)  # opaque where there is an alpha channel
    img.putpixel((1, 2), pixel)
    img.save(tmp_path / "m.png")
    values = read_mask(tmp_path / "m.png")
    assert values.dtype == np.uint8 and values.shape == (4, 4)
    assert (values > 0).sum() == 1 and values[2, 1] > 0


def test_sixteen_bit_image_and_mask_are_scaled_not_clipped(tmp_path):
    from kdq.function.data.files import read_image, read_mask

    grey = np.array([[0, 257 * 100], [65535, 300]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "i.png")
    assert Image.open(tmp_path / "i.png").mode.startswith("I")
    rgb = np.asarray(read_image(tmp_path / "i.png"))
    assert rgb.shape == (2, 2, 3) and rgb[..., 0].tolist() == [[0, 100], [255, 1]]  # not 255 everywhere
    mask = np.array([[0, 1], [65535, 0]], np.uint16)
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert (read_mask(tmp_path / "m.png") > 0).tolist() == [[False, True], [True, False]]  # 1/65535 stays > 0


def test_a_mask_must_fit_its_image():
    from kdq.function.data.files import mask_fits

    assert mask_fits((500, 375), (500, 375)) and mask_fits((250, 188), (500, 375))  # an exact rescale
    assert not mask_fits((375, 500), (500, 375)) and not mask_fits((200, 200), (500, 375))


@pytest.mark.parametrize("name, why", [("a/b.png", None), ("a/b c.png", None), ("a/ b.png", "space"),
                                       ("a /b.png", "space"), ("a/b.png ", "space"), ("a/b\nc.png", "line break"),
                                       ("a/b\rc.png", "line break"), (os.fsdecode(b"a/caf\xe9.png"), "UTF-8")])
def test_names_that_cannot_be_listed_one_per_line(name, why):
    from kdq.function.data.files import bad_name

    reason = bad_name(name)
    assert (reason is None) if why is None else (why in reason)
