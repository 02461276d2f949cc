"""prepare_data.py: tiny CUB / VOC / ILSVRC trees in their official layouts → the docs/method.md §4 layout, exactly.

Every source tree is fabricated here (a few images of a few classes); nothing is downloaded.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.prepare.common import enlarge_box, pixel_box
from kdq.function.data.prepare.voc import CLASSES as VOC_CLASSES
from tests.helpers import one_error_line, run_script

SCRIPT = "prepare_data"


def prepare(*argv) -> int:
    return run_script(SCRIPT, *argv)



def picture(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth colour image (JPEG keeps it close to exact)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(40, 200, size=3)
    img = base + 30 * np.sin(xx[..., None] / 7.0 + rng.uniform(0, 3, 3)) + 30 * np.cos(yy[..., None] / 5.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def save_jpeg(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=98)


def save_palette(path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    img.save(path)


def load_mask(path, binary: bool = True) -> np.ndarray:
    """A written mask as bool (value > 0); ``binary``: it must hold only 0 and 255."""
    with Image.open(path) as m:
        assert m.mode == "L"
        if binary:
            assert set(np.unique(np.asarray(m)).tolist()) <= {0, 255}
        return np.asarray(m) > 0


def manifest(root) -> dict:
    return json.loads((root / "dataset.json").read_text())


# ==== CUB-200-2011 =====================================================================================
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
# id, class index (1-based), file stem, is_train, (width, height)
CUB_IMAGES = [(1, 1, "Black_Footed_Albatross_0001_1", 1, (40, 30)), (2, 1, "Black_Footed_Albatross_0002_2", 0, (36, 44)),
              (3, 2, "Laysan_Albatross_0003_3", 1, (32, 32)), (4, 2, "Laysan_Albatross_0004_4", 0, (48, 30)),
              (5, 3, "Sooty_Albatross_0005_5", 1, (30, 40)), (6, 3, "Sooty_Albatross_0006_6", 0, (44, 36))]


def soft_segmentation(width: int, height: int, seed: int) -> np.ndarray:
    """Values 0 / 51 / 153 / 255 in known places, like CUB's annotator-agreement PNGs."""
    seg = np.zeros((height, width), dtype=np.uint8)
    seg[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 153
    seg[height // 3: height // 2, width // 3: width // 2] = 255
    seg[1:3, 1 + seed % 3: 6] = 51
    return seg


def make_cub(base):
    """``base/CUB_200_2011`` (the main archive) and ``base/segmentations`` (the separate one)."""
    cub = base / "CUB_200_2011"
    (cub / "images").mkdir(parents=True)
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    for image_id, label, stem, train, (w, h) in CUB_IMAGES:
        rel = f"{CUB_CLASSES[label - 1]}/{stem}.jpg"
        save_jpeg(cub / "images" / rel, picture(w, h, image_id))
        seg = base / "segmentations" / CUB_CLASSES[label - 1] / f"{stem}.png"
        seg.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(soft_segmentation(w, h, image_id), mode="L").save(seg)
        lines["images.txt"].append(f"{image_id} {rel}")
        lines["image_class_labels.txt"].append(f"{image_id} {label}")
        lines["train_test_split.txt"].append(f"{image_id} {train}")
    lines["classes.txt"] = [f"{i} {c}" for i, c in enumerate(CUB_CLASSES, start=1)]
    for name, rows in lines.items():
        (cub / name).write_text("\n".join(rows) + "\n")
    return cub


@pytest.fixture
def cub(tmp_path):
    return make_cub(tmp_path / "download")


def test_cub_layout_splits_and_masks(cub, tmp_path, capsys):
    out = tmp_path / "cub"
    assert prepare("cub", "--src", cub.parent, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "train: 3 images, 3 with a mask (100.0%)" in printed and "test: 3 images" in printed
    for image_id, label, stem, train, (w, h) in CUB_IMAGES:
        split, cls = ("train" if train else "test"), CUB_CLASSES[label - 1]
        img = out / split / cls / f"{stem}.jpg"
        assert img.read_bytes() == (cub / "images" / cls / f"{stem}.jpg").read_bytes() and not img.is_symlink()
        seg = soft_segmentation(w, h, image_id)
        path = out / "seg" / split / cls / f"{stem}.png"
        assert np.array_equal(load_mask(path, binary=False), seg > 0)
        with Image.open(path) as m:  # the soft grey values themselves, which the original resized bilinearly
            assert np.array_equal(np.asarray(m), seg)
    for split in ("train", "test"):
        ds = MaskedImageFolder(out, split, require_masks=True)
        assert ds.classes == CUB_CLASSES and len(ds) == 3
        assert ds.mask(0).shape == ds.load_image(0).size[::-1]
    record = manifest(out)
    assert record["status"] == "complete" and record["classes"] == CUB_CLASSES
    assert record["splits"]["train"] == {"images": 3, "masked": 3, "per_class": {c: 1 for c in CUB_CLASSES}}


def test_cub_threshold_link_and_class_subset(cub, tmp_path):
    out = tmp_path / "cub"
    assert prepare("cub", "--src", cub, "--out", out, "--mask-threshold", "127", "--link",
                   "--classes", "1", "Sooty_Albatross") == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == [CUB_CLASSES[0], CUB_CLASSES[2]]
    image_id, label, stem, _, (w, h) = CUB_IMAGES[0]
    img = out / "train" / CUB_CLASSES[0] / f"{stem}.jpg"
    assert img.is_symlink() and img.resolve() == (cub / "images" / CUB_CLASSES[0] / f"{stem}.jpg").resolve()
    mask = load_mask(out / "seg" / "train" / CUB_CLASSES[0] / f"{stem}.png", binary=False)
    seg = soft_segmentation(w, h, image_id)
    assert np.array_equal(mask, seg > 127) and not np.array_equal(mask, seg > 0)
    assert len(MaskedImageFolder(out, "test", require_masks=True)) == 2


def test_rerun_is_idempotent_and_other_options_need_overwrite(cub, tmp_path, capsys):
    out = tmp_path / "cub"
    assert prepare("cub", "--src", cub, "--out", out) == 0
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "dataset.json")
    stamps = {p: p.stat().st_mtime_ns for p in files}
    capsys.readouterr()
    assert prepare("cub", "--src", cub, "--out", out) == 0
    assert "0 images written, 6 already there" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in files} == stamps

    # an interrupted run: a lost mask, a left-over temporary file → the rerun completes it
    lost = out / "seg" / "test" / CUB_CLASSES[1] / f"{CUB_IMAGES[3][2]}.png"
    lost.unlink()
    (lost.parent / f".{lost.name}.abc.tmp").write_bytes(b"half")
    assert prepare("cub", "--src", cub, "--out", out) == 0
    assert lost.is_file() and not list(out.rglob("*.tmp"))
    capsys.readouterr()

    # other options: refused without --overwrite, then redone, removing the classes no longer asked for
    assert prepare("cub", "--src", cub, "--out", out, "--classes", CUB_CLASSES[0]) == 2
    assert "other options (classes)" in one_error_line(capsys)
    assert prepare("cub", "--src", cub, "--out", out, "--classes", CUB_CLASSES[0], "--overwrite") == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == [CUB_CLASSES[0]]
    assert sorted(p.name for p in (out / "seg" / "test").iterdir()) == [CUB_CLASSES[0]]
    assert manifest(out)["classes"] == [CUB_CLASSES[0]]


def test_an_interrupted_overwrite_is_finished_with_overwrite(cub, tmp_path, monkeypatch):
    from kdq.function.data.prepare import common as prep_common

    out = tmp_path / "cub"
    assert prepare("cub", "--src", cub, "--out", out) == 0
    calls = []

    def flaky(*args, **kwargs):  # the second mask of the threshold-127 run dies (a crash, a kill)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = prep_common.Writer.add
    monkeypatch.setattr(prep_common.Writer, "add", flaky)
    assert prepare("cub", "--src", cub, "--out", out, "--mask-threshold", "127", "--overwrite") == 130
    monkeypatch.setattr(prep_common.Writer, "add", real)
    assert manifest(out)["status"] == "incomplete"
    assert prepare("cub", "--src", cub, "--out", out, "--mask-threshold", "127") == 0  # no --overwrite
    for image_id, label, stem, train, (w, h) in CUB_IMAGES:
        mask = load_mask(out / "seg" / ("train" if train else "test") / CUB_CLASSES[label - 1] / f"{stem}.png",
                         binary=False)
        assert np.array_equal(mask, soft_segmentation(w, h, image_id) > 127), stem


def _drop_line(path, prefix):
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith(prefix)))


@pytest.mark.parametrize("case, expected", [
    ("no classes.txt", "classes.txt is missing"),
    ("no segmentations", "segmentations is missing"),
    ("image absent", "is listed in images.txt but absent"),
    ("mask of another size", "is 20x20 but its image"),
    ("unknown class", "unknown CUB class(es) 999.Dodo"),
    ("out inside src", "is inside the source"),
    ("not a dataset", "does not exist"),
])
def test_cub_bad_inputs(cub, tmp_path, capsys, case, expected):
    out, extra = tmp_path / "cub", []
    cls, stem = CUB_CLASSES[0], CUB_IMAGES[0][2]
    if case == "no classes.txt":
        (cub / "classes.txt").unlink()
    elif case == "no segmentations":
        (cub.parent / "segmentations").rename(cub.parent / "segs")
    elif case == "image absent":
        (cub / "images" / cls / f"{stem}.jpg").unlink()
    elif case == "mask of another size":
        Image.new("L", (20, 20)).save(cub.parent / "segmentations" / cls / f"{stem}.png")
    elif case == "unknown class":
        extra = ["--classes", "1", "999.Dodo"]
    elif case == "out inside src":
        out = cub / "prepared"
    elif case == "not a dataset":
        cub = tmp_path / "nowhere"
    assert prepare("cub", "--src", cub, "--out", out, *extra) == 2
    line = one_error_line(capsys)
    assert expected in line, line
    if case != "out inside src":
        assert not (out / "train").exists()


def test_out_that_holds_something_else_is_refused(cub, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert prepare("cub", "--src", cub, "--out", out) == 2
    assert "is not empty" in one_error_line(capsys)
    assert sorted(os.listdir(out)) == ["notes.txt"]


# ==== VOC 2012 =========================================================================================
VOC_IDX = {"cat": 8, "chair": 9, "dog": 12, "person": 15}


def obj_xml(name, box, difficult=0):
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


# image id → split, (width, height), objects [(name, VOC box 1-based inclusive, instance drawn?, class drawn)]
VOC_IMAGES = {
    "2008_000001": ("train", (60, 40), [("dog", (11, 6, 30, 25), True, "dog"),
                                        ("person", (45, 1, 60, 15), True, "person")]),
    "2008_000002": ("val", (50, 50), [("cat", (5, 5, 24, 44), True, "cat"),
                                      ("chair", (30, 30, 40, 40), False, None),   # no segmentation
                                      ("dog", (30, 5, 45, 20), True, "cat")]),    # its pixels say cat
    "2008_000003": ("train", (32, 48), [("cat", (3, 3, 29, 46), True, "cat"),
                                        ("dog", (2, 30, 6, 33), True, "dog")]),
    "2008_000004": ("val", (40, 30), [("dog", (10.0, 5.0, 31.0, 26.0), True, "dog")]),
}


def voc_pngs(size, objects):
    """SegmentationObject / SegmentationClass: instance k fills its box shrunk by 1 px, with a void rim."""
    w, h = size
    obj, cls = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    for k, (_, box, drawn, drawn_cls) in enumerate(objects, start=1):
        if not drawn:
            continue
        x0, y0, x1, y1 = pixel_box(box, w, h)
        obj[y0:y1, x0:x1], cls[y0:y1, x0:x1] = 255, 255
        obj[y0 + 1:y1 - 1, x0 + 1:x1 - 1], cls[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = k, VOC_IDX[drawn_cls]
    return obj, cls


def make_voc(base):
    voc = base / "VOCdevkit" / "VOC2012"
    for sub in ("Annotations", "JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    for i, (image_id, (split, (w, h), objects)) in enumerate(VOC_IMAGES.items()):
        save_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", picture(w, h, 10 + i))
        obj, cls = voc_pngs((w, h), objects)
        save_palette(voc / "SegmentationObject" / f"{image_id}.png", obj)
        save_palette(voc / "SegmentationClass" / f"{image_id}.png", cls)
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><segmented>1</segmented>"
            + "".join(obj_xml(name, box) for name, box, _, _ in objects) + "</annotation>")
    for split in ("train", "val"):
        ids = [i for i, (s, _, _) in VOC_IMAGES.items() if s == split]
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return voc


@pytest.fixture
def voc(tmp_path):
    return make_voc(tmp_path / "download")


def test_enlarge_box_geometry():
    # a 20x20 box at [10, 30) grows to 24: two pixels each way
    assert enlarge_box((10, 5, 30, 25), 1.2, 60, 40) == (8, 3, 32, 27)
    # odd growth: 16 → 19 (3 more: 1 left, 2 right), 15 → 18 (1 up, 2 down), then clipped to the image
    assert enlarge_box((44, 0, 60, 15), 1.2, 60, 40) == (43, 0, 60, 17)
    # 5 → 6: the one extra pixel goes right; scale 1 is the box itself
    assert enlarge_box((2, 2, 7, 7), 1.2, 20, 20) == (2, 2, 8, 8)
    assert enlarge_box((3, 4, 13, 9), 1.0, 20, 20) == (3, 4, 13, 9)
    # VOC boxes are 1-based and inclusive; float coordinates are rounded; boxes are clipped
    assert pixel_box((11, 6, 30, 25), 60, 40) == (10, 5, 30, 25)
    assert pixel_box((10.0, 4.6, 31.4, 26.5), 60, 40) == (9, 4, 31, 27)
    assert pixel_box((0, -3, 70, 45), 60, 40) == (0, 0, 60, 40)


def test_voc_object_crops_and_instance_masks(voc, tmp_path, capsys):
    out = tmp_path / "voc"
    assert prepare("voc", "--src", voc.parent.parent, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "objects without segmentation: 1" in printed and "objects with mismatched class: 1" in printed
    written = {}
    for image_id, (split, (w, h), objects) in VOC_IMAGES.items():
        obj_png, _ = voc_pngs((w, h), objects)
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as src:
            source = np.asarray(src.convert("RGB")).astype(int)
        for k, (name, box, drawn, drawn_cls) in enumerate(objects, start=1):
            crop_path = out / split / name / f"{image_id}_{k}.jpg"
            if not drawn or drawn_cls != name:
                assert not crop_path.exists()
                continue
            x0, y0, x1, y1 = enlarge_box(pixel_box(box, w, h), 1.2, w, h)
            with Image.open(crop_path) as crop:
                assert crop.size == (x1 - x0, y1 - y0)
                assert np.abs(np.asarray(crop).astype(int) - source[y0:y1, x0:x1]).mean() < 3
            mask = load_mask(out / "seg" / split / name / f"{image_id}_{k}.png")
            assert np.array_equal(mask, obj_png[y0:y1, x0:x1] == k)
            written.setdefault(split, []).append(f"{name}/{image_id}_{k}.jpg")
    # the 20x20 dog of 2008_000001 → a 24x24 crop; the person at the corner is clipped (17x17)
    with Image.open(out / "train" / "dog" / "2008_000001_1.jpg") as crop:
        assert crop.size == (24, 24)
    with Image.open(out / "train" / "person" / "2008_000001_2.jpg") as crop:
        assert crop.size == (17, 17)
    for split in ("train", "val"):
        ds = MaskedImageFolder(out, split, require_masks=True)
        assert sorted(ds.names) == sorted(written[split])
        assert all(ds.mask(i).shape == ds.load_image(i).size[::-1] for i in range(len(ds)))
    record = manifest(out)
    assert record["classes"] == list(VOC_CLASSES) == sorted(VOC_CLASSES)
    assert record["splits"]["train"]["images"] == 4 and record["splits"]["val"]["images"] == 2


def test_voc_class_subset_and_scale(voc, tmp_path):
    out = tmp_path / "voc"
    assert prepare("voc", "--src", voc, "--out", out, "--classes", "dog", "--crop-scale", "1.0") == 0
    assert [p.name for p in (out / "train").iterdir()] == ["dog"]
    with Image.open(out / "train" / "dog" / "2008_000001_1.jpg") as crop:
        assert crop.size == (20, 20)
    assert MaskedImageFolder(out, "val", require_masks=True).names == ["dog/2008_000004_1.jpg"]


@pytest.mark.parametrize("case, expected", [
    ("no SegmentationObject", "SegmentationObject is missing"),
    ("no ImageSets", "ImageSets/Segmentation is missing"),
    ("image absent", "2008_000003.jpg is absent but 2008_000003 is listed"),
    ("mask of another size", "is 10x10 but its image"),
    ("unknown class", "unknown VOC class(es) dragon"),
    ("rgb mask", "not an indexed (palette) PNG"),
    ("doctype", "declares a DOCTYPE"),
    ("out inside src", "is inside the source"),
])
def test_voc_bad_inputs(voc, tmp_path, capsys, case, expected):
    out, extra = tmp_path / "voc", []
    if case == "no SegmentationObject":
        (voc / "SegmentationObject").rename(voc / "other")
    elif case == "no ImageSets":
        (voc / "ImageSets").rename(voc / "other")
    elif case == "image absent":
        (voc / "JPEGImages" / "2008_000003.jpg").unlink()
    elif case == "mask of another size":
        save_palette(voc / "SegmentationObject" / "2008_000003.png", np.zeros((10, 10)))
    elif case == "unknown class":
        extra = ["--classes", "dog", "dragon"]
    elif case == "rgb mask":
        Image.new("RGB", (32, 48)).save(voc / "SegmentationClass" / "2008_000003.png")
    elif case == "doctype":
        xml = voc / "Annotations" / "2008_000003.xml"
        xml.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx">]>' + xml.read_text())
    elif case == "out inside src":
        out = voc / "prepared"
    assert prepare("voc", "--src", voc, "--out", out, *extra) == 2
    line = one_error_line(capsys)
    assert expected in line, line


def test_voc_has_no_link_flag(voc, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # an argparse error: before run() maps errors to statuses
        prepare("voc", "--src", voc, "--out", tmp_path / "voc", "--link")
    assert exc.value.code == 2
    assert "unrecognized arguments: --link" in one_error_line(capsys)


# ==== ILSVRC (CLS-LOC) =================================================================================
LION, TIGER, OTHER = "n02129165", "n02129604", "n01440764"


def ilsvrc_xml(folder, stem, size, objects):
    w, h = size
    return (f"<annotation><folder>{folder}</folder><filename>{stem}</filename><source><database>ILSVRC_2012"
            f"</database></source><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>" + "".join(obj_xml(n, b) for n, b in objects) + "</annotation>")


# train: wnid → [(stem, size, boxes or None)];  val: stem → (wnid, size, boxes)
IL_TRAIN = {
    LION: [(f"{LION}_1", (40, 30), [(LION, (3, 2, 10, 8)), (LION, (20, 10, 35, 28))]),
           (f"{LION}_2", (30, 30), None)],
    TIGER: [(f"{TIGER}_7", (36, 24), [(TIGER, (1, 1, 36, 24))]),
            (f"{TIGER}_8", (24, 36), [(OTHER, (2, 2, 5, 5))])],     # a box of another class only: no mask
    OTHER: [(f"{OTHER}_3", (20, 20), [(OTHER, (2, 2, 9, 9))])],
}
IL_VAL = {"ILSVRC2012_val_00000001": (TIGER, (30, 20), [(TIGER, (5, 5, 15, 12))]),
          "ILSVRC2012_val_00000002": (OTHER, (20, 20), [(OTHER, (1, 1, 20, 20))]),
          "ILSVRC2012_val_00000003": (LION, (26, 26), [(LION, (4, 4, 8, 8)), (LION, (10, 12, 20, 25))])}


def make_ilsvrc(base, train=IL_TRAIN, val=IL_VAL):
    """The Kaggle layout: ``base/ILSVRC/{Data,Annotations}/CLS-LOC/...`` and ``base/LOC_*`` beside it."""
    il = base / "ILSVRC"
    seed = 100
    for wnid, images in train.items():
        (il / "Annotations" / "CLS-LOC" / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for stem, (w, h), boxes in images:
            seed += 1
            save_jpeg(il / "Data" / "CLS-LOC" / "train" / wnid / f"{stem}.JPEG", picture(w, h, seed))
            if boxes is not None:
                (il / "Annotations" / "CLS-LOC" / "train" / wnid / f"{stem}.xml").write_text(
                    ilsvrc_xml(wnid, stem, (w, h), boxes))
    (il / "Annotations" / "CLS-LOC" / "val").mkdir(parents=True)
    (il / "Data" / "CLS-LOC" / "val").mkdir(parents=True, exist_ok=True)
    rows = []
    for stem, (wnid, (w, h), boxes) in val.items():
        seed += 1
        save_jpeg(il / "Data" / "CLS-LOC" / "val" / f"{stem}.JPEG", picture(w, h, seed))
        (il / "Annotations" / "CLS-LOC" / "val" / f"{stem}.xml").write_text(ilsvrc_xml("val", stem, (w, h), boxes))
        rows.append([stem, " ".join(f"{n} {' '.join(str(v) for v in b)}" for n, b in boxes) + " "])
    with open(base / "LOC_val_solution.csv", "w", newline="") as f:
        csv.writer(f).writerows([["ImageId", "PredictionString"], *rows])
    (base / "LOC_synset_mapping.txt").write_text(
        f"{OTHER} tench, Tinca tinca\n{LION} lion, king of beasts, Panthera leo\n{TIGER} tiger, Panthera tigris\n")
    return base


@pytest.fixture
def ilsvrc(tmp_path):
    return make_ilsvrc(tmp_path / "imagenet")


def expected_box_mask(size, boxes, wnid):
    w, h = size
    mask = np.zeros((h, w), bool)
    for name, box in boxes:
        if name == wnid:
            x0, y0, x1, y1 = pixel_box(box, w, h)
            mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize("val_labels", ["auto", "xml"])
def test_ilsvrc_box_masks_and_val_labels(ilsvrc, tmp_path, capsys, val_labels):
    out = tmp_path / "ilsvrc"
    assert prepare("ilsvrc", "--src", ilsvrc, "--out", out, "--classes", TIGER, LION,
                   "--val-labels", val_labels) == 0
    printed = capsys.readouterr().out
    assert "train: 4 images, 2 with a mask (50.0%); 2 without: no box, the sigma stage uses the central square" \
        in printed
    for wnid in (LION, TIGER):
        for stem, size, boxes in IL_TRAIN[wnid]:
            img = out / "train" / wnid / f"{stem}.JPEG"
            assert img.read_bytes() == (ilsvrc / "ILSVRC/Data/CLS-LOC/train" / wnid / img.name).read_bytes()
            mask_path = out / "seg" / "train" / wnid / f"{stem}.png"
            expected = expected_box_mask(size, boxes or [], wnid)
            assert mask_path.is_file() == bool(expected.any())
            if expected.any():
                assert np.array_equal(load_mask(mask_path), expected)
    assert not (out / "train" / OTHER).exists()
    val = MaskedImageFolder(out, "val", require_masks=True, classes=[TIGER, LION])
    assert val.names == [f"{TIGER}/ILSVRC2012_val_00000001.JPEG", f"{LION}/ILSVRC2012_val_00000003.JPEG"]
    for i, stem in enumerate(["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000003"]):
        wnid, size, boxes = IL_VAL[stem]
        assert np.array_equal(val.mask(i), expected_box_mask(size, boxes, wnid))
    train = MaskedImageFolder(out, "train")
    assert sum(train.mask(i) is None for i in range(len(train))) == 2
    record = manifest(out)
    assert record["options"]["val_labels"] == ("csv" if val_labels == "auto" else "xml")
    assert record["class_names"] == {TIGER: "tiger", LION: "lion"} and record["classes"] == [LION, TIGER]
    assert record["splits"]["train"]["masked"] == 2 and record["splits"]["val"]["masked"] == 2


def test_ilsvrc_train_boxes_from_the_solution_csv(ilsvrc, tmp_path):
    import shutil

    shutil.rmtree(ilsvrc / "ILSVRC/Annotations/CLS-LOC/train")
    with open(ilsvrc / "LOC_train_solution.csv", "w", newline="") as f:
        csv.writer(f).writerows([["ImageId", "PredictionString"],
                                 [f"{LION}_1", f"{LION} 3 2 10 8 {LION} 20 10 35 28 "]])
    out = tmp_path / "ilsvrc"
    assert prepare("ilsvrc", "--src", ilsvrc, "--out", out, "--classes", LION) == 0
    stem, size, boxes = IL_TRAIN[LION][0]
    assert np.array_equal(load_mask(out / "seg/train" / LION / f"{stem}.png"), expected_box_mask(size, boxes, LION))
    assert not (out / "seg/train" / LION / f"{LION}_2.png").exists()
    assert manifest(out)["splits"]["train"]["masked"] == 1


def test_ilsvrc_default_classes(tmp_path, capsys):
    from kdq.function.data.prepare.ilsvrc import DEFAULT_CLASSES

    base = make_ilsvrc(tmp_path / "imagenet", train={w: [(f"{w}_1", (16, 12), [(w, (2, 2, 8, 8))])]
                                                     for w in [*DEFAULT_CLASSES, OTHER]}, val={})
    out = tmp_path / "ilsvrc"
    assert prepare("ilsvrc", "--src", base / "ILSVRC", "--out", out, "--link") == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(DEFAULT_CLASSES)
    assert all(p.is_symlink() for p in (out / "train").rglob("*.JPEG"))
    assert manifest(out)["classes"] == sorted(DEFAULT_CLASSES)
    # a tree without them: the error says they are the defaults
    assert prepare("ilsvrc", "--src", tmp_path / "other", "--out", tmp_path / "o2") == 2
    capsys.readouterr()
    make_ilsvrc(tmp_path / "small")
    assert prepare("ilsvrc", "--src", tmp_path / "small", "--out", tmp_path / "o3") == 2
    assert "the default classes; pass --classes" in one_error_line(capsys)


def test_ilsvrc_box_for_another_image_size(ilsvrc, tmp_path, capsys):
    xml = ilsvrc / "ILSVRC/Annotations/CLS-LOC/train" / LION / f"{LION}_1.xml"
    xml.write_text(ilsvrc_xml(LION, f"{LION}_1", (50, 50), [(LION, (3, 2, 10, 8))]))
    assert prepare("ilsvrc", "--src", ilsvrc, "--out", tmp_path / "a", "--classes", LION) == 2
    assert "is for a 50x50 image but the image is 40x30" in one_error_line(capsys)
    assert prepare("ilsvrc", "--src", ilsvrc, "--out", tmp_path / "b", "--classes", LION, "--bad-box", "skip") == 0
    assert "images with a box of another size skipped: 1" in capsys.readouterr().out
    assert not (tmp_path / "b" / "seg" / "train" / LION / f"{LION}_1.png").exists()


@pytest.mark.parametrize("case, expected", [
    ("no Data", "Data/CLS-LOC is missing"),
    ("no val labels", "one is needed for the val labels"),
    ("val image absent", "ILSVRC2012_val_00000003.JPEG is absent but listed"),
    ("unknown wnid", "unknown ILSVRC wnid(s) n00000000"),
    ("bad csv", "does not start with the header"),
])
def test_ilsvrc_bad_inputs(ilsvrc, tmp_path, capsys, case, expected):
    if case == "no Data":
        (ilsvrc / "ILSVRC" / "Data").rename(ilsvrc / "ILSVRC" / "Pictures")
    elif case == "no val labels":
        (ilsvrc / "LOC_val_solution.csv").unlink()
        (ilsvrc / "ILSVRC/Annotations/CLS-LOC/val").rename(ilsvrc / "elsewhere")
    elif case == "val image absent":
        (ilsvrc / "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000003.JPEG").unlink()
    elif case == "bad csv":
        (ilsvrc / "LOC_val_solution.csv").write_text("id,boxes\n")
    classes = [LION, "n00000000"] if case == "unknown wnid" else [LION]
    assert prepare("ilsvrc", "--src", ilsvrc, "--out", tmp_path / "out", "--classes", *classes) == 2
    line = one_error_line(capsys)
    assert expected in line, line


def test_classes_from_a_file_and_debug_before_the_subcommand(ilsvrc, tmp_path):
    from kdq.function.stages.prepare_data import get_args_parser

    listing = tmp_path / "wnids.txt"
    listing.write_text(f"{LION}\n{TIGER}\n")
    args = get_args_parser().parse_args(["--debug", "ilsvrc", "--src", "s", "--out", "o", "--classes", f"@{listing}"])
    assert args.debug is True and args.classes == [LION, TIGER]
    assert get_args_parser().parse_args(["cub", "--src", "s", "--out", "o"]).debug is False


@pytest.mark.parametrize("dataset", ["cub", "voc", "ilsvrc"])
def test_help_documents_the_flags(dataset, capsys):
    from kdq.function.stages.prepare_data import get_args_parser

    with pytest.raises(SystemExit) as exc:
        get_args_parser().parse_args([dataset, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--src", "--out", "--classes", "--overwrite", "--debug"):
        assert flag in text
    assert ("--link" in text) == (dataset != "voc")
