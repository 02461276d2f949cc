"""CUB-200-2011 → docs/method.md §4 layout: splits ``train`` / ``test`` as ``train_test_split.txt`` defines them, one
folder per class (``001.Black_footed_Albatross`` …), masks from the segmentation PNGs.

Source: ``CUB_200_2011.tgz`` extracted (``CUB_200_2011/{images.txt, classes.txt, image_class_labels.txt,
train_test_split.txt, images/}``) and the separate ``segmentations.tgz`` extracted inside or beside it
(``segmentations/<class>/<stem>.png``).

The segmentation PNGs are soft: 0 … 255 in steps of 51, roughly the share of annotators who marked the pixel.
The mask written keeps those grey values where ``segmentation > --mask-threshold`` (0 elsewhere): with the default 0
it is the PNG itself, which the original code resized bilinearly before taking its cells (docs/method.md §2:
``segmentation > 0``, any annotator); 127 is a majority vote.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np

from kdq.function.cli import UserError, in_range
from kdq.function.data.prepare.common import (Preparation, Writer, find_root, image_size, read_lines, require,
                                              select_classes, source_mask)

NAME = "cub"
SPLITS = ("train", "test")
LISTS = ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--segmentations", type=Path, default=None,
                   help="folder of the segmentation PNGs (segmentations/<class>/<stem>.png); default: "
                        "'segmentations' inside --src or beside the CUB_200_2011 folder")
    p.add_argument("--mask-threshold", type=in_range(0, 254, kind=int), default=0,
                   help="mask = segmentation PNG value > this (0..254; values are 0..255, 0 = the method's "
                        "'segmentation > 0', 127 = annotator majority)")


def _table(root: Path, name: str) -> dict[int, str]:
    rows = read_lines(root / name)
    try:
        return {int(r[0]): " ".join(r[1:]) for r in rows}
    except (ValueError, IndexError):
        raise UserError(f"--src: {root / name} is not '<id> <value>' per line") from None


def find_segmentations(src: Path, root: Path, given: Path | None) -> Path:
    if given is not None:
        return require(given, "--segmentations folder")
    for cand in (root / "segmentations", root.parent / "segmentations", src / "segmentations"):
        if cand.is_dir():
            return cand
    raise UserError(f"--src: {root / 'segmentations'} is missing (extract segmentations.tgz inside or beside "
                    f"{root.name}, or pass --segmentations DIR)")


def plan(args: argparse.Namespace) -> Preparation:
    root = find_root(args.src, "images.txt", ["CUB_200_2011"])
    for name in LISTS:
        require(root / name)
    images_dir = require(root / "images")
    seg_dir = find_segmentations(args.src, root, args.segmentations)

    images, class_names = _table(root, "images.txt"), _table(root, "classes.txt")
    labels, is_train = _table(root, "image_class_labels.txt"), _table(root, "train_test_split.txt")
    known = [class_names[k] for k in sorted(class_names)]
    aliases = {}
    for k, name in class_names.items():
        aliases.update({str(k): name, f"{k:03d}": name, name.split(".", 1)[-1]: name})
    classes = select_classes(args.classes, known, known, "CUB class(es)", aliases)
    chosen = set(classes)

    units = []
    for image_id in sorted(images):
        rel = images[image_id]
        try:
            cls, split = class_names[int(labels[image_id])], SPLITS[0 if is_train[image_id].strip() == "1" else 1]
        except (KeyError, ValueError):
            raise UserError(f"--src: image {image_id} ({rel}) has no class or split in {root}") from None
        if cls not in chosen:
            continue
        source = images_dir / rel
        if not source.is_file():
            raise UserError(f"--src: {source} is listed in images.txt but absent")
        seg = seg_dir / Path(rel).with_suffix(".png")
        if not seg.is_file():
            raise UserError(f"--src: segmentation {seg} of {rel} is missing")
        units.append(partial(_write_one, split, cls, source, seg, args.mask_threshold))
    options = {"source": str(root.resolve()), "segmentations": str(seg_dir.resolve()), "classes": classes,
               "mask_threshold": args.mask_threshold, "link": args.link}
    return Preparation(root, classes, SPLITS, options, units, notes={})


def soft_mask(seg_path: Path, image_path: Path, threshold: int) -> np.ndarray:
    """The segmentation's grey values where they are > ``threshold``, 0 elsewhere (uint8 (H, W)); a UserError when
    its size is not the image's."""
    width, height = image_size(image_path)
    values = source_mask(seg_path)
    if values.shape != (height, width):
        raise UserError(f"--src: mask {seg_path} is {values.shape[1]}x{values.shape[0]} but its image {image_path} "
                        f"is {width}x{height}")
    return np.where(values > threshold, values, 0).astype(np.uint8)


def _write_one(split: str, cls: str, source: Path, seg: Path, threshold: int, writer: Writer) -> None:
    writer.add(split, cls, source.name, source=source, mask=lambda: soft_mask(seg, source, threshold))
