"""PASCAL VOC 2012 → docs/method.md §4 layout of object crops: splits ``train`` / ``val`` from
``ImageSets/Segmentation/{train,val}.txt``, one folder per VOC category, one image per object instance.

Source: ``VOCtrainval_11-May-2012.tar`` extracted (``VOCdevkit/VOC2012/{Annotations, ImageSets/Segmentation,
JPEGImages, SegmentationClass, SegmentationObject}``); ``--src`` may name ``VOC2012``, ``VOCdevkit`` or the
folder holding ``VOCdevkit``.

Each object crop is the object's box (from the annotation XML) enlarged ``--crop-scale`` (1.2) times about its
centre and clipped to the image (:func:`function.prep_common.enlarge_box`); its mask is the object's instance
pixels in ``SegmentationObject`` cropped the same way (the void/boundary value 255 is background).  Written as
``<split>/<class>/<image_id>_<k>.jpg`` (JPEG quality 95) and ``seg/<split>/<class>/<image_id>_<k>.png``.

Matching annotation objects to instances: in ``SegmentationObject`` the pixel value ``k`` (1, 2, …) is the
``k``-th ``<object>`` of the image's XML, in file order (the VOC devkit's convention).  Each match is checked
against ``SegmentationClass``: the majority class index under the instance's pixels must be the XML object's
category, else the object is skipped and counted ("objects with mismatched class").  Objects with no pixel in
``SegmentationObject`` and instance values beyond the XML's object count are counted as well.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from kdq.function.cli import UserError, positive_float
from kdq.function.data.prepare.common import (Preparation, Writer, enlarge_box, find_root, image_size, parse_xml, pixel_box,
                                  require, select_classes, source_image, source_indices, xml_objects)

NAME = "voc"
SPLITS = ("train", "val")
CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOID = 255
FOLDERS = ("Annotations", "JPEGImages", "SegmentationObject", "SegmentationClass")
NOTES = ("objects_without_segmentation", "objects_with_mismatched_class", "instances_without_xml_object",
         "objects_with_empty_box", "difficult_objects_skipped")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crop-scale", type=positive_float, default=1.2,
                   help="each crop is the object's box enlarged this many times about its centre (clipped)")
    p.add_argument("--skip-difficult", action="store_true",
                   help="leave out objects marked <difficult>1</difficult> (kept by default)")


def read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in require(path).read_text().splitlines() if line.strip()]


def plan(args: argparse.Namespace) -> Preparation:
    root = find_root(args.src, "ImageSets/Segmentation", ["VOC2012", "VOCdevkit/VOC2012"])
    dirs = {name: require(root / name) for name in FOLDERS}
    classes = select_classes(args.classes, list(CLASSES), list(CLASSES), "VOC class(es)")
    notes = {key: 0 for key in NOTES}
    units = []
    for split in SPLITS:
        for image_id in read_ids(root / "ImageSets" / "Segmentation" / f"{split}.txt"):
            files = {"xml": dirs["Annotations"] / f"{image_id}.xml", "jpg": dirs["JPEGImages"] / f"{image_id}.jpg",
                     "obj": dirs["SegmentationObject"] / f"{image_id}.png",
                     "cls": dirs["SegmentationClass"] / f"{image_id}.png"}
            for path in files.values():
                if not path.is_file():
                    raise UserError(f"--src: {path} is absent but {image_id} is listed in "
                                    f"ImageSets/Segmentation/{split}.txt")
            units.append(partial(_write_image, split, image_id, files, frozenset(classes), args.crop_scale,
                                 args.skip_difficult, notes))
    options = {"source": str(root.resolve()), "classes": classes, "crop_scale": args.crop_scale,
               "skip_difficult": args.skip_difficult}
    return Preparation(root, classes, SPLITS, options, units, notes)


def index_png(path: Path) -> np.ndarray:
    """The raw indices of a VOC palette PNG (mode P; mode L is read as is), through the checked reader."""
    return source_indices(path)


def majority_class(cls_png: np.ndarray, instance: np.ndarray) -> int:
    """The most frequent class index under ``instance`` (0 and the void value do not count; 0 if none)."""
    values = cls_png[instance]
    values = values[(values != 0) & (values != VOID)]
    return int(np.bincount(values).argmax()) if values.size else 0


def _write_image(split: str, image_id: str, files: dict[str, Path], chosen: frozenset, scale: float,
                 skip_difficult: bool, notes: dict, writer: Writer) -> None:
    objects = xml_objects(parse_xml(files["xml"]), files["xml"])
    width, height = image_size(files["jpg"])
    obj_png, cls_png = index_png(files["obj"]), index_png(files["cls"])
    for key in ("obj", "cls"):
        shape = (obj_png if key == "obj" else cls_png).shape
        if shape != (height, width):
            raise UserError(f"--src: mask {files[key]} is {shape[1]}x{shape[0]} but its image {files['jpg']} "
                            f"is {width}x{height}")
    present = set(np.unique(obj_png).tolist()) - {0, VOID}
    notes["instances_without_xml_object"] += sum(1 for v in present if v > len(objects))

    picture: list[Image.Image] = []

    def load() -> Image.Image:
        if not picture:
            picture.append(source_image(files["jpg"]))
        return picture[0]

    for k, obj in enumerate(objects, start=1):
        if obj.name not in chosen:
            continue
        if skip_difficult and obj.difficult:
            notes["difficult_objects_skipped"] += 1
            continue
        if k not in present:
            notes["objects_without_segmentation"] += 1
            continue
        instance = obj_png == k
        if majority_class(cls_png, instance) != CLASSES.index(obj.name) + 1:
            notes["objects_with_mismatched_class"] += 1
            continue
        x0, y0, x1, y1 = enlarge_box(pixel_box(obj.box, width, height), scale, width, height)
        if x1 <= x0 or y1 <= y0:
            notes["objects_with_empty_box"] += 1
            continue
        writer.add(split, obj.name, f"{image_id}_{k}.jpg",
                   render=lambda box=(x0, y0, x1, y1): load().crop(box),
                   mask=lambda inst=instance[y0:y1, x0:x1]: inst)
