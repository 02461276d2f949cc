"""Point clouds (function/data/points.py, make_dataset --modality points): the generator's determinism and layout,
foreground points on the class's shape and background clutter off it, the exact surface distances, the reader's
checks and the torch dataset."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdq.function.cli import UserError
from kdq.function.data.points import (SHAPES, PointDataset, cloud_rng, read_point_split, render_cloud,
                                      sample_surface, surface_distance, write_point_dataset)
from tests.helpers import one_error_line, run_script

SMALL = {"teacher": 1, "train": 2, "val": 1}


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_the_layout(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_point_dataset(tmp_path / name, seed=seed, num_classes=2, per_class=SMALL, show_progress=False)
    a, b, c = (digests(tmp_path / n) for n in "abc")
    assert a == b
    clouds = ["teacher/00_sphere/pts_00000.npy", "teacher/01_cube/pts_00001.npy",
              "train/00_sphere/pts_00000.npy", "train/00_sphere/pts_00001.npy", "train/01_cube/pts_00002.npy",
              "train/01_cube/pts_00003.npy", "val/00_sphere/pts_00000.npy", "val/01_cube/pts_00001.npy"]
    assert sorted(a) == sorted(["dataset.json", *clouds, *(f"seg/{f}" for f in clouds)])
    assert a["train/01_cube/pts_00002.npy"] != c["train/01_cube/pts_00002.npy"]
    manifest = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert manifest["modality"] == "points" and manifest["points"] == 128
    assert manifest["classes"] == ["00_sphere", "01_cube"]
    assert manifest["splits"] == {"teacher": 2, "train": 4, "val": 2}


def test_saved_clouds_are_centred_in_the_unit_sphere_with_0_1_flags(tmp_path):
    write_point_dataset(tmp_path / "d", seed=0, num_classes=5, per_class={"train": 4}, show_progress=False)
    for path in sorted((tmp_path / "d" / "train").rglob("*.npy")):
        pts = np.load(path)
        flags = np.load(tmp_path / "d" / "seg" / path.relative_to(tmp_path / "d"))
        assert pts.dtype == np.float32 and pts.shape == (128, 3)
        assert np.linalg.norm(pts, axis=1).max() == pytest.approx(1.0, abs=1e-6)
        assert np.abs(pts.mean(axis=0)).max() < 1e-6
        assert flags.dtype == np.uint8 and flags.shape == (128,) and set(np.unique(flags)) == {0, 1}
        assert 0.5 * 128 - 1 <= flags.sum() <= 0.8 * 128 + 1  # PointStyle's foreground share, 0.5..0.8
        assert not (flags[:64] == 1).all() and not (flags[64:] == 0).all()  # shuffled, not foreground first


def test_a_saved_cloud_is_the_scene_of_its_own_stream(tmp_path):
    write_point_dataset(tmp_path / "d", seed=7, num_classes=3, per_class={"val": 2}, show_progress=False)
    cloud = render_cloud(cloud_rng(7, "val", 5), 2, 3, 128)  # class 2's second cloud is index 2 * 2 + 1
    assert np.array_equal(np.load(tmp_path / "d" / "val" / "02_cone" / "pts_00005.npy"), cloud.points)
    assert np.array_equal(np.load(tmp_path / "d" / "seg" / "val" / "02_cone" / "pts_00005.npy"),
                          cloud.foreground.astype(np.uint8))


@pytest.mark.parametrize("shape, point, distance", [
    ("sphere", (2, 0, 0), 1.0), ("sphere", (0, 0, 0), 1.0), ("sphere", (0, 0.6, 0.8), 0.0),
    ("cube", (0, 0, 0), 0.75), ("cube", (1, 0, 0), 0.25), ("cube", (1, 1, 0), math.sqrt(2) * 0.25),
    ("cube", (0.7, 0.1, 0.2), 0.05),
    ("cylinder", (0, 0, 0), 0.6), ("cylinder", (0.6, 0, 0.3), 0.0), ("cylinder", (1.0, 0, 1.2), 0.5),
    ("cylinder", (0.1, 0, 0.85), 0.05),
    ("cone", (0, 0, 0.8), 0.0), ("cone", (0, 0, -0.8), 0.0), ("cone", (0, 0, 0), 0.64 / math.sqrt(3.2)),
    ("cone", (0, 0, -1.0), 0.2),
    ("torus", (0.75, 0, 0), 0.3), ("torus", (0, 0, 0), 0.45), ("torus", (0, 1.05, 0), 0.0),
    ("torus", (0.75, 0, 0.5), 0.2),
])
def test_surface_distance_by_hand(shape, point, distance):
    assert surface_distance(shape, np.array([point], dtype=float))[0] == pytest.approx(distance, abs=1e-9)


def test_uniform_surface_samples_lie_on_the_shape_spread_by_area():
    rng = np.random.default_rng(0)
    n = 20000
    samples = {shape: sample_surface(shape, rng, n) for shape in SHAPES}
    for shape, p in samples.items():
        assert surface_distance(shape, p).max() < 1e-9, shape
    assert np.abs(samples["sphere"][:, 2]).mean() == pytest.approx(0.5, abs=0.01)  # z is uniform on a sphere
    caps = np.isclose(np.abs(samples["cylinder"][:, 2]), 0.9).mean()
    assert caps == pytest.approx(0.6 / (0.6 + 2 * 0.9), abs=0.015)  # caps' area / total: a / (a + 2b)
    base = np.isclose(samples["cone"][:, 2], -0.8).mean()
    assert base == pytest.approx(0.8 / (0.8 + math.hypot(0.8, 1.6)), abs=0.015)  # a / (a + slant)
    cone_rho = np.hypot(samples["cone"][:, 0], samples["cone"][:, 1]) / 0.8
    on_base = np.isclose(samples["cone"][:, 2], -0.8)
    for part in (on_base, ~on_base):  # the base disk and the unrolled side: the mean radius is 2/3 of the largest
        assert cone_rho[part].mean() == pytest.approx(2 / 3, abs=0.01)
    outer = (np.hypot(samples["torus"][:, 0], samples["torus"][:, 1]) > 0.75).mean()
    assert outer == pytest.approx(0.5 + 0.3 / (math.pi * 0.75), abs=0.015)  # 1/2 + r / (pi R)


def test_foreground_points_lie_on_the_shape_and_clutter_off_it():
    for label, shape in enumerate(SHAPES):
        near_bg = total_bg = 0
        skew = []
        for index in range(15):
            cloud = render_cloud(cloud_rng(0, "train", 100 * label + index), label, len(SHAPES), 128)
            local = cloud.shape_coordinates(cloud.points)
            d = surface_distance(shape, local)
            assert d[cloud.foreground].max() < 0.06, (shape, index)
            near_bg += int((d[~cloud.foreground] < 0.06).sum())
            total_bg += int((~cloud.foreground).sum())
            fg = local[cloud.foreground]
            skew.append(np.linalg.norm((fg / np.linalg.norm(fg, axis=1, keepdims=True)).mean(axis=0)))
        assert near_bg / total_bg < 0.03, shape
        if shape == "sphere":  # non-uniform density: uniform directions would average to about 0.1
            assert np.mean(skew) > 0.25, skew


def test_the_ground_plane_is_background_under_the_object():
    for label in range(len(SHAPES)):
        cloud = render_cloud(cloud_rng(1, "val", label), label, len(SHAPES), 256)
        world = cloud.points.astype(np.float64) * cloud.radius + cloud.centre
        ground = world[cloud.foreground, 2].min() - 0.1 * cloud.scale
        on_plane = np.abs(world[:, 2] - ground) < 0.04 * cloud.scale
        assert not (on_plane & cloud.foreground).any()
        assert on_plane.sum() >= 0.4 * (~cloud.foreground).sum() - 1


def test_the_foreground_share_does_not_depend_on_the_class():
    shares = [[render_cloud(cloud_rng(2, "teacher", 50 * label + i), label, 5, 128).foreground.mean()
               for i in range(40)] for label in range(5)]
    assert all(0.5 - 0.01 <= s <= 0.8 + 0.01 for row in shares for s in row)
    assert all(abs(np.mean(row) - 0.65) < 0.04 for row in shares), [np.mean(r) for r in shares]  # mid 0.5..0.8


def test_point_dataset_items(tmp_path):
    write_point_dataset(tmp_path / "d", seed=0, num_classes=2, per_class=SMALL, show_progress=False)
    ds = PointDataset(tmp_path / "d", "train")
    assert len(ds) == 4 and ds.targets == [0, 0, 1, 1] and ds.classes == ["00_sphere", "01_cube"]
    assert ds.names[2] == "01_cube/pts_00002.npy"
    pts, label, fg = ds[3]
    assert pts.dtype == torch.float32 and pts.shape == (128, 3) and label == 1
    assert fg.dtype == torch.bool and fg.shape == (128,)
    saved = np.load(tmp_path / "d" / "seg" / "train" / "01_cube" / "pts_00003.npy")
    assert fg.tolist() == (saved == 1).tolist()
    records = read_point_split(tmp_path / "d", "val")
    assert [r.name for r in records] == ["00_sphere/pts_00000.npy", "01_cube/pts_00001.npy"]


def _own(root: Path, n: int = 10, manifest: dict | None = None) -> Path:
    """A user's folder: two classes, one cloud of ``n`` points in class a of split train."""
    (root / "train" / "a").mkdir(parents=True)
    (root / "seg" / "train" / "a").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(manifest or {"modality": "points", "classes": ["a", "b"]}))
    np.save(root / "train" / "a" / "x.npy", np.random.default_rng(0).normal(size=(n, 3)))
    np.save(root / "seg" / "train" / "a" / "x.npy", (np.arange(n) % 2).astype(np.uint8))
    return root


CLOUD, FLAGS = "train/a/x.npy", "seg/train/a/x.npy"


@pytest.mark.parametrize("file, content, message", [
    (CLOUD, np.array([[0.0, np.nan, 1.0]] * 10), "cloud {root}/train/a/x.npy has NaN or infinite coordinates"),
    (CLOUD, np.array([[0.0, np.inf, 1.0]] * 10), "has NaN or infinite coordinates"),
    (CLOUD, np.array([[1e300, 0.0, 0.0]] * 10), "has NaN or infinite coordinates (in float32)"),
    (CLOUD, np.zeros((0, 3)), "cloud {root}/train/a/x.npy has zero points"),
    (CLOUD, np.zeros((10, 2)), "cloud {root}/train/a/x.npy has shape (10, 2), not (P, 3)"),
    (CLOUD, np.zeros(30), "has shape (30,), not (P, 3)"),
    (CLOUD, b"not a numpy file", "cloud {root}/train/a/x.npy cannot be read"),
    (CLOUD, np.array(["a", "b", "c"] * 10).reshape(10, 3), "does not hold a numeric array"),
    (FLAGS, None, "foreground file {root}/seg/train/a/x.npy of cloud {root}/train/a/x.npy is missing"),
    (FLAGS, np.zeros(9, np.uint8), "foreground file {root}/seg/train/a/x.npy has shape (9,), its cloud has 10 points"),
    (FLAGS, np.zeros((10, 1), np.uint8), "has shape (10, 1)"),
    (FLAGS, np.full(10, 2, np.uint8), "foreground file {root}/seg/train/a/x.npy: flags must be 0 or 1, got 2"),
    (FLAGS, np.full(10, 0.5), "flags must be 0 or 1, got 0.5"),
])
def test_reader_refuses_a_bad_file_naming_it(tmp_path, file, content, message):
    root = _own(tmp_path / "d")
    path = root / file
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    for read in (lambda: read_point_split(root, "train"), lambda: PointDataset(root, "train")):
        with pytest.raises(UserError) as err:
            read()
        assert message.format(root=root) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda r: (r / "train" / "c").mkdir(), "holds class folder(s) that dataset.json does not list: c"),
    (lambda r: (r / "train" / "a" / "x.npy").unlink(), "holds no clouds"),
    (lambda r: (r / "dataset.json").write_text('{"modality": "points", "classes": ["a"], "points": 12}'),
     "x.npy has 10 points, dataset.json says \"points\": 12"),
    (lambda r: (r / "dataset.json").write_text('{"classes": ["a"]}'), "describes modality 'image', not 'points'"),
    (lambda r: (r / "dataset.json").unlink(), "dataset.json not found"),
])
def test_reader_refuses_a_bad_folder_in_one_line(tmp_path, change, message):
    root = _own(tmp_path / "d")
    change(root)
    with pytest.raises(UserError) as err:
        read_point_split(root, "train")
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="splits here: train"):
        read_point_split(_own(tmp_path / "e"), "val")


def test_clouds_of_several_sizes_are_records_but_not_one_dataset(tmp_path):
    root = _own(tmp_path / "d")
    (root / "train" / "b").mkdir()
    (root / "seg" / "train" / "b").mkdir()
    np.save(root / "train" / "b" / "y.npy", np.zeros((12, 3), np.float32))
    np.save(root / "seg" / "train" / "b" / "y.npy", np.ones(12, np.uint8))
    records = read_point_split(root, "train")
    assert [(r.name, r.label, len(r.points), int(r.foreground.sum())) for r in records] == \
        [("a/x.npy", 0, 10, 5), ("b/y.npy", 1, 12, 12)]
    with pytest.raises(UserError) as err:
        PointDataset(root, "train")
    assert "holds clouds of 2 sizes (10 points: a/x.npy, 12 points: b/y.npy)" in str(err.value)
    assert "\n" not in str(err.value)


def test_make_dataset_points_writes_the_layout_with_the_same_bytes(tmp_path, capsys):
    flags = ["--modality", "points", "--num-classes", "5", "--teacher-per-class", "2", "--train-per-class", "1",
             "--val-per-class", "1", "--points", "32", "--no-progress"]
    assert run_script("make_dataset", "--out", tmp_path / "a", *flags) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"wrote {tmp_path / 'a'}: points, 5 classes")
    assert run_script("make_dataset", "--out", tmp_path / "b", *flags) == 0
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    ds = PointDataset(tmp_path / "a", "teacher")
    assert len(ds) == 10 and ds[9][0].shape == (32, 3) and ds.classes[4] == "04_cylinder"


@pytest.mark.parametrize("flags, message", [
    (["--points", "8"], "--points must be at least 16, got 8"),
    (["--num-classes", "6"], "--num-classes must be in 2..5 for --modality points, got 6"),
    (["--max-length", "9"], "--max-length: not an option of --modality points"),
    (["--image-size", "9", "--class-words", "2"], "--class-words, --image-size: not an option of --modality points"),
])
def test_make_dataset_points_refuses_bad_flags_in_one_line(tmp_path, capsys, flags, message):
    assert run_script("make_dataset", "--out", tmp_path / "d", "--modality", "points", *flags) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "d").exists()
