"""ILSVRC (ImageNet CLS-LOC) → docs/method.md §4 layout for a subset of classes: splits ``train`` / ``val``, one folder per
wnid, box masks where a bounding box is known.

Source: the CLS-LOC layout of the ImageNet object-localisation release (as unpacked from the Kaggle
"ImageNet Object Localization Challenge" archive)::

    ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG      ILSVRC/Annotations/CLS-LOC/train/<wnid>/<wnid>_<n>.xml
    ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_<n>.JPEG       ILSVRC/Annotations/CLS-LOC/val/ILSVRC2012_val_<n>.xml
    LOC_synset_mapping.txt  LOC_train_solution.csv  LOC_val_solution.csv   (beside ILSVRC/, optional)

``--src`` may name the folder holding ``Data/`` or the one above it.

* Classes: ``--classes`` wnids (``all`` = every train folder).  The default is :data:`DEFAULT_CLASSES`, ten
  terrestrial mammals.  The paper's ILSVRC class list is not recorded in this repository, so this default is a
  documented stand-in, not the paper's list; pass the list you need (``--classes @wnids.txt`` reads a file).
* Train: every image of the class folder; its mask is the union of its boxes of that class, from its XML under
  ``Annotations/CLS-LOC/train`` (or, when that folder is absent, from ``LOC_train_solution.csv``).  Images
  without a box get no mask file; the sigma stage then uses the central square (docs/method.md §2).  The summary counts them.
* Val: the class of a val image and its boxes come from ``LOC_val_solution.csv`` when present, else from the
  val XMLs (``--val-labels`` forces one); every val image has boxes.
* Boxes are read like VOC's (1-based, inclusive pixel indices, clipped to the image).
"""
from __future__ import annotations

import argparse
import csv
from functools import partial
from pathlib import Path

import numpy as np

from kdq.function.cli import UserError
from kdq.function.data.layout import IMAGE_EXTENSIONS
from kdq.function.data.prepare.common import (Preparation, Writer, box_mask, find_root, image_size, parse_xml, pixel_box, require,
                                  select_classes, xml_objects, xml_size)

NAME = "ilsvrc"
SPLITS = ("train", "val")
DEFAULT_CLASSES = {
    "n02129165": "lion", "n02129604": "tiger", "n02510455": "giant panda", "n02504458": "African elephant",
    "n02391049": "zebra", "n02133161": "American black bear", "n02403003": "ox", "n02480855": "gorilla",
    "n02398521": "hippopotamus", "n02437616": "llama",
}
NO_MASK_NOTE = "no box, the sigma stage uses the central square"

Box = tuple[str, tuple[float, float, float, float]]  # (wnid, (xmin, ymin, xmax, ymax))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-labels", choices=("auto", "csv", "xml"), default="auto",
                   help="where val classes and boxes come from: LOC_val_solution.csv, the val XMLs, or auto "
                        "(the CSV when present, else the XMLs)")
    p.add_argument("--bad-box", choices=("error", "skip"), default="error",
                   help="an annotation whose image size differs from its image's: stop (error) or write that "
                        "image without a mask (skip, counted in the summary)")


def find_file(root: Path, name: str) -> Path | None:
    for folder in (root, root.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def read_solution(path: Path) -> dict[str, list[Box]]:
    """``LOC_*_solution.csv``: ``ImageId,PredictionString`` with ``wnid xmin ymin xmax ymax`` repeated."""
    table: dict[str, list[Box]] = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise UserError(f"--src: {path} does not start with the header 'ImageId,PredictionString'")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            parts = row[1].split() if len(row) > 1 else []
            if len(parts) % 5:
                raise UserError(f"--src: {path}:{line}: PredictionString is not 'wnid xmin ymin xmax ymax' groups")
            try:
                table[row[0]] = [(parts[i], tuple(float(v) for v in parts[i + 1:i + 5]))  # type: ignore[misc]
                                 for i in range(0, len(parts), 5)]
            except ValueError:
                raise UserError(f"--src: {path}:{line}: a box coordinate is not a number") from None
    return table


def read_xml_boxes(path: Path) -> tuple[list[Box], tuple[int, int] | None]:
    root = parse_xml(path)
    return [(o.name, o.box) for o in xml_objects(root, path)], xml_size(root)


def known_wnids(root: Path, train_dir: Path) -> tuple[list[str], dict[str, str]]:
    folders = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    names: dict[str, str] = {}
    mapping = find_file(root, "LOC_synset_mapping.txt")
    if mapping is not None:
        for line in mapping.read_text().splitlines():
            wnid, _, name = line.partition(" ")
            if wnid:
                names[wnid] = name.split(",")[0].strip()
    return folders, names


def plan(args: argparse.Namespace) -> Preparation:
    root = find_root(args.src, "Data/CLS-LOC", ["ILSVRC"])
    train_dir = require(root / "Data" / "CLS-LOC" / "train")
    val_dir = require(root / "Data" / "CLS-LOC" / "val")
    known, names = known_wnids(root, train_dir)
    requested = args.classes or list(DEFAULT_CLASSES)
    classes = select_classes(requested, known, known, "ILSVRC wnid(s)" + ("" if args.classes else
                             " (the default classes; pass --classes)"))
    chosen = set(classes)
    notes = {"images_with_a_box_of_another_size_skipped": 0}

    # train: boxes from the XMLs, else from LOC_train_solution.csv, else none
    ann_train = root / "Annotations" / "CLS-LOC" / "train"
    train_csv = None if ann_train.is_dir() else find_file(root, "LOC_train_solution.csv")
    train_boxes = read_solution(train_csv) if train_csv else None
    units = []
    for wnid in classes:
        for image in sorted(p for p in (train_dir / wnid).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            if ann_train.is_dir():
                xml = ann_train / wnid / f"{image.stem}.xml"
                boxes = partial(read_xml_boxes, xml) if xml.is_file() else None
            elif train_boxes is not None and image.stem in train_boxes:
                boxes = partial(_given, train_boxes[image.stem], None)
            else:
                boxes = None
            units.append(partial(_write_one, "train", wnid, image, boxes, args.bad_box, notes))

    # val: class and boxes from LOC_val_solution.csv or the val XMLs
    val_csv, ann_val = find_file(root, "LOC_val_solution.csv"), root / "Annotations" / "CLS-LOC" / "val"
    source = args.val_labels
    if source == "auto":
        source = "csv" if val_csv else "xml"
    if source == "csv":
        if val_csv is None:
            raise UserError(f"--src: {root.parent / 'LOC_val_solution.csv'} is missing (needed for the val labels)")
        labelled = {stem: (boxes, None) for stem, boxes in read_solution(val_csv).items()}
    else:
        if not ann_val.is_dir():
            raise UserError(f"--src: neither {root.parent / 'LOC_val_solution.csv'} nor {ann_val} is there "
                            f"(one is needed for the val labels)")
        labelled = {xml.stem: read_xml_boxes(xml) for xml in sorted(ann_val.glob("*.xml"))}
    for stem in sorted(labelled):
        boxes, size = labelled[stem]
        if not boxes or boxes[0][0] not in chosen:
            continue
        wnid = boxes[0][0]
        image = val_dir / f"{stem}.JPEG"
        if not image.is_file():
            raise UserError(f"--src: {image} is absent but listed with its labels")
        units.append(partial(_write_one, "val", wnid, image, partial(_given, boxes, size),
                             args.bad_box, notes))

    options = {"source": str(root.resolve()), "classes": classes, "val_labels": source, "link": args.link,
               "bad_box": args.bad_box}
    return Preparation(root, classes, SPLITS, options, units, notes, NO_MASK_NOTE,
                class_names={w: names.get(w) or DEFAULT_CLASSES.get(w, "") for w in classes})


def _given(boxes: list[Box], size: tuple[int, int] | None) -> tuple[list[Box], tuple[int, int] | None]:
    """Boxes already read (from a CSV, or the val XMLs read while sorting val images by class)."""
    return boxes, size


def _write_one(split: str, wnid: str, image: Path, boxes, bad_box: str, notes: dict, writer: Writer) -> None:
    mask = partial(_box_mask, wnid, image, boxes, bad_box, notes) if boxes is not None else None
    writer.add(split, wnid, image.name, source=image, mask=mask)


def _box_mask(wnid: str, image: Path, boxes, bad_box: str, notes: dict) -> np.ndarray | None:
    """The union of the image's boxes of class ``wnid``; None when it has none (then no mask file)."""
    listed, size = boxes()
    own = [box for name, box in listed if name == wnid]
    if not own:
        return None
    width, height = image_size(image)
    if size is not None and size != (width, height):
        if bad_box == "skip":
            notes["images_with_a_box_of_another_size_skipped"] += 1
            return None
        raise UserError(f"--src: mask (box annotation) of {image} is for a {size[0]}x{size[1]} image but the "
                        f"image is {width}x{height}")
    return box_mask([pixel_box(b, width, height) for b in own], width, height)
