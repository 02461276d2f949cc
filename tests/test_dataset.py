"""The embedded dataset: deterministic, exact masks, disjoint splits, SPEC §4 layout; the folder dataset."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

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


def test_mask_to_grid_nearest():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:4, 0:4] = True
    grid = mask_to_grid(mask, size=16, grid=4)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0:2, 0:2] = True
    assert np.array_equal(grid, expected)
    # a mask of another size is first resized to S×S
    big = np.kron(mask, np.ones((3, 3), dtype=bool))
    assert np.array_equal(mask_to_grid(big, size=16, grid=4), expected)


def test_central_square():
    m = central_square(12)
    assert m[2:10, 2:10].all() and m.sum() == 64
