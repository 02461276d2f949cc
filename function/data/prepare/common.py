"""What the dataset preparers (:mod:`kdq.function.stages.prepare_data`) share: the output writer, safe XML, boxes.

A preparer turns a downloaded dataset into the docs/method.md §4 layout::

    <out>/<split>/<class>/<image>           the images (copied, linked or cropped)
    <out>/seg/<split>/<class>/<stem>.png    the masks, 0 / 255 (> 0 is foreground)
    <out>/dataset.json                      what was prepared, from where, with which options, counts

Every file is written under a temporary name and renamed into place (:mod:`function.atomic`), so a file
under its final name is always complete; an interrupted run is resumed by running the same command again:
files already there are kept, the rest is written, and the result is checked against the plan (every
planned file present, nothing else in the class folders).
"""
from __future__ import annotations

import logging
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from kdq.function.cli import UserError
from kdq.function.data.files import UnreadableFile, image_header, read_image, read_indices, read_mask
from kdq.function.io.atomic import atomic_path, write_json
from kdq.function.io.lock import acquire
from kdq.function.io.rundir import DATASET_JSON, read_json

log = logging.getLogger(__name__)

MANIFEST = DATASET_JSON
SEG = "seg"
LOCATION_KEYS = ("source", "segmentations")  # recorded, but a moved download is not "other options"


# ---- source and output folders ----------------------------------------------------------------------
def find_root(src: Path, marker: str, candidates: Iterable[str], flag: str = "--src") -> Path:
    """The folder under ``src`` (``src`` itself or one of ``candidates``) that holds ``marker``.

    Users point ``--src`` at the folder they extracted, which may be the dataset folder itself or one
    above it; when none matches, the error names the file that is missing under ``src`` itself.
    """
    if not src.exists():
        raise UserError(f"{flag}: {src} does not exist")
    if not src.is_dir():
        raise UserError(f"{flag}: {src} is not a directory")
    for sub in ("", *candidates):
        root = src / sub if sub else src
        if (root / marker).exists():
            return root
    where = ", ".join(str(Path(c) / marker) for c in candidates)
    raise UserError(f"{flag}: {src} is not in the expected layout: {src / marker} is missing"
                    + (f" (also looked for {where})" if where else ""))


def require(path: Path, what: str = "") -> Path:
    """``path`` if it exists, else a UserError naming it (the source is not in the expected layout)."""
    if not path.exists():
        raise UserError(f"--src: {what + ' ' if what else ''}{path} is missing (not in the expected layout)")
    return path


def check_out_not_in_src(out: Path, src: Path) -> None:
    out_r, src_r = out.resolve(), src.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise UserError(f"--out: {out} is inside the source {src}; write the prepared dataset elsewhere")


def read_lines(path: Path) -> list[list[str]]:
    """Whitespace-split non-empty lines of a text list (CUB's ``images.txt`` and friends)."""
    require(path)
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def select_classes(requested: list[str] | None, known: list[str], default: list[str], what: str,
                   aliases: dict[str, str] | None = None) -> list[str]:
    """Resolve ``--classes`` against the ``known`` names (``all`` = every one); unknown names are an error.

    The result is sorted, the order in which :class:`function.datasets.MaskedImageFolder` numbers the class
    folders, so the manifest's ``classes`` list is the label order.
    """
    if not requested:
        return sorted(default)
    if requested == ["all"]:
        return sorted(known)
    aliases = aliases or {}
    known_set, chosen, unknown = set(known), [], []
    for name in requested:
        name = aliases.get(name, name)
        if name not in known_set:
            unknown.append(name)
        elif name not in chosen:
            chosen.append(name)
    if unknown:
        sample = ", ".join(known[:3]) + (", ..." if len(known) > 3 else "")
        raise UserError(f"--classes: unknown {what} {', '.join(unknown)} (known: {sample}; {len(known)} in all)")
    return sorted(chosen)


# ---- XML --------------------------------------------------------------------------------------------
def parse_xml(path: Path) -> ET.Element:
    """Parse a local annotation file with the standard library.

    ``defusedxml`` is not a dependency. These files are local annotation files the user downloaded, not
    input from a network peer; still, a document type declaration (the only way to declare entities, i.e.
    the "billion laughs" and external-entity attacks) is refused outright — VOC and ILSVRC annotations have
    none — so ElementTree never expands an entity.
    """
    data = require(path).read_bytes()
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise UserError(f"--src: {path} declares a DOCTYPE/ENTITY; annotation files never do, refusing to parse it")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise UserError(f"--src: {path} is not valid XML ({exc})") from None


@dataclass(frozen=True)
class XmlObject:
    name: str
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written in the file
    difficult: bool


def xml_objects(root: ET.Element, path: Path) -> list[XmlObject]:
    """The ``<object>`` entries of a VOC/ILSVRC annotation, in file order."""
    objects = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        bnd = obj.find("bndbox")
        try:
            box = tuple(float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            raise UserError(f"--src: {path}: object {len(objects) + 1} ({name or '?'}) has no valid <bndbox>") from None
        objects.append(XmlObject(name, box, (obj.findtext("difficult") or "0").strip() == "1"))
    return objects


def xml_size(root: ET.Element) -> tuple[int, int] | None:
    """(width, height) from ``<size>``, or None when absent or zero."""
    try:
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


# ---- boxes ------------------------------------------------------------------------------------------
def pixel_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """A VOC-style box (1-based, inclusive pixel indices) → 0-based half-open ``(x0, y0, x1, y1)``,
    clipped to the image.  VOC ``xmin=1, xmax=10`` is the 10 columns ``0..9``."""
    xmin, ymin, xmax, ymax = (int(np.floor(v + 0.5)) for v in box)
    x0, y0 = min(max(xmin - 1, 0), width), min(max(ymin - 1, 0), height)
    x1, y1 = min(max(xmax, x0), width), min(max(ymax, y0), height)
    return x0, y0, x1, y1


def enlarge_box(box: tuple[int, int, int, int], scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Enlarge a 0-based half-open box ``scale``× about its centre, then clip it to the image.

    Each side grows to ``floor(scale·side + 0.5)`` pixels; the added pixels are split evenly, the odd one
    going to the right/bottom (so a 10-px side becomes 12: one pixel each way; a 5-px side becomes 6: the
    extra pixel on the right).  Integer arithmetic: the crop geometry is exact and testable.
    """
    x0, y0, x1, y1 = box

    def grow(lo: int, hi: int, limit: int) -> tuple[int, int]:
        side = hi - lo
        new = int(np.floor(scale * side + 0.5))
        lo2 = lo - (new - side) // 2
        return max(lo2, 0), min(lo2 + new, limit)

    (nx0, nx1), (ny0, ny1) = grow(x0, x1, width), grow(y0, y1, height)
    return nx0, ny0, nx1, ny1


def box_mask(boxes: Iterable[tuple[int, int, int, int]], width: int, height: int) -> np.ndarray:
    """Union of 0-based half-open boxes as an (H, W) bool mask."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a source image from its header (the pixels are not decoded)."""
    return image_header(path, "--src: image")[1]


# every source file a preparer decodes goes through the checked readers of kdq.function.data.files: a damaged one
# is one line naming it (with --src), never a traceback
def source_image(path: Path) -> Image.Image:
    """A source image, decoded, as RGB."""
    return _from_src(read_image, path)


def source_mask(path: Path) -> np.ndarray:
    """A source mask (CUB's segmentation PNGs) as its grey values by value (uint8 (H, W))."""
    return _from_src(read_mask, path)


def source_indices(path: Path) -> np.ndarray:
    """A source label map (VOC's SegmentationObject / SegmentationClass PNGs) as its raw palette indices."""
    return _from_src(read_indices, path)


def _from_src(reader: Callable, path: Path):
    try:
        return reader(path)
    except UnreadableFile as exc:
        raise UnreadableFile(f"--src: {exc}") from None


@dataclass
class Preparation:
    """What a preparer will do: ``units`` are callables ``unit(writer)``, one per source image (tqdm counts
    them); ``notes`` are counts a unit may add to (objects skipped, and why) and end in the summary."""
    root: Path
    classes: list[str]
    splits: tuple[str, ...]
    options: dict
    units: list[Callable[["Writer"], None]]
    notes: dict = field(default_factory=dict)
    no_mask_note: str | None = None
    class_names: dict[str, str] = field(default_factory=dict)  # folder name → readable name, when known


# ---- the writer -------------------------------------------------------------------------------------
def mask_png_values(mask: np.ndarray) -> np.ndarray:
    """The grey values a mask file holds: a bool mask as 0/255, grey values (uint8) as they are (> 0 is
    foreground either way; the sigma stage resizes the grey values bilinearly, as the original code)."""
    mask = np.asarray(mask)
    return mask.astype(np.uint8) * 255 if mask.dtype == bool else np.ascontiguousarray(mask, dtype=np.uint8)


@dataclass
class SplitCount:
    images: int = 0
    masked: int = 0
    per_class: dict[str, int] = field(default_factory=dict)


class Writer:
    """Writes images and masks into the docs/method.md §4 layout, skipping files a previous run already wrote.

    ``link``: symlink copied images to their (absolute) source instead of copying them.  ``overwrite``:
    rewrite every file even when it exists.  It records what it was asked to write, so :meth:`verify` can
    check the folder against the plan, and counts images and masks per split (``splits``).
    """

    def __init__(self, out: Path, link: bool = False, overwrite: bool = False):
        self.out, self.link, self.overwrite = out, link, overwrite
        self.splits: dict[str, SplitCount] = {}
        self.expected: set[Path] = set()
        self.written = 0
        self.present = 0

    # paths
    def image_path(self, split: str, cls: str, name: str) -> Path:
        return self.out / split / cls / name

    def mask_path(self, split: str, cls: str, name: str) -> Path:
        return self.out / SEG / split / cls / (Path(name).stem + ".png")

    def _is_done(self, path: Path, source: Path | None = None) -> bool:
        """Whether ``path`` already holds what this run would write (a copy of ``source`` is checked by
        its size, a link by pointing at an existing file)."""
        if self.overwrite or not path.exists():  # exists() is False for a broken link
            return False
        if source is None:
            return True
        if self.link:
            return path.is_symlink() and os.readlink(path) == str(source.resolve())
        return not path.is_symlink() and path.stat().st_size == source.stat().st_size

    def _count(self, split: str, cls: str, masked: bool) -> None:
        c = self.splits.setdefault(split, SplitCount())
        c.images += 1
        c.masked += int(masked)
        c.per_class[cls] = c.per_class.get(cls, 0) + 1

    def _done(self, wrote: bool) -> None:
        if wrote:
            self.written += 1
        else:
            self.present += 1

    # items
    def add(self, split: str, cls: str, name: str, *, source: Path | None = None,
            render: Callable[[], Image.Image] | None = None,
            mask: Callable[[], np.ndarray | None] | None = None, image_format: str = "JPEG") -> None:
        """One output image: a copy/link of ``source`` or the picture ``render()`` returns, with the mask
        ``mask()`` returns (a bool (H, W) array of the output image's size; None: this image has no mask).

        ``mask`` is called first, and only when the mask file is not there yet, so a bad mask (say, of the
        wrong size) raises before anything is written for this image.
        """
        img_path, m_path = self.image_path(split, cls, name), self.mask_path(split, cls, name)
        if img_path in self.expected:
            raise UserError(f"two images would both be written to {img_path}")
        self.expected.add(img_path)
        mask_array, masked = None, False
        if mask is not None:
            if self._is_done(m_path):
                masked = True
            else:
                mask_array = mask()
                masked = mask_array is not None
            if masked:
                self.expected.add(m_path)
        if source is not None:
            if self._is_done(img_path, source):
                self._done(False)
            else:
                self._place(source, img_path)
                self._done(True)
        else:
            assert render is not None
            if self._is_done(img_path):
                self._done(False)
            else:
                picture = render()
                if mask_array is not None and mask_array.shape != (picture.size[1], picture.size[0]):
                    raise AssertionError(f"mask {mask_array.shape} and image {picture.size} of {img_path} differ")
                with atomic_path(img_path) as tmp:
                    picture.save(tmp, format=image_format, **({"quality": 95} if image_format == "JPEG" else {}))
                self._done(True)
        if mask_array is not None:
            with atomic_path(m_path) as tmp:
                Image.fromarray(mask_png_values(mask_array), mode="L").save(tmp, format="PNG")
        self._count(split, cls, masked)

    def _place(self, source: Path, dest: Path) -> None:
        with atomic_path(dest) as tmp:
            if self.link:
                tmp.unlink()
                os.symlink(source.resolve(), tmp)
            else:
                shutil.copyfile(source, tmp)

    # checks
    def verify(self, splits: Iterable[str]) -> list[Path]:
        """Check the output against the plan: every planned file exists; files in the split and mask
        folders that are not planned (from an earlier run with other options) are removed with
        ``overwrite``, else reported.  Leftover temporary files of an interrupted write are removed."""
        extra: list[Path] = []
        for top in [self.out / s for s in splits] + [self.out / SEG / s for s in splits]:
            if not top.is_dir():
                continue
            for path in sorted(top.rglob("*")):
                if path.is_dir() and not path.is_symlink():
                    continue
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink()
                elif path not in self.expected:
                    extra.append(path)
        missing = [p for p in self.expected if not p.exists()]
        if missing:
            raise UserError(f"--out: {len(missing)} planned file(s) are missing after writing (first: {missing[0]})")
        if extra and not self.overwrite:
            raise UserError(f"--out: {len(extra)} file(s) in {self.out} are not part of this preparation (first: "
                            f"{extra[0]}); they come from an earlier run with other options: pass --overwrite "
                            f"to remove them")
        for path in extra:
            path.unlink()
        for top in [self.out / s for s in splits] + [self.out / SEG / s for s in splits]:
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True) if top.is_dir() else []:
                if not any(d.iterdir()):
                    d.rmdir()
        return extra


# ---- the manifest -----------------------------------------------------------------------------------
def open_output(out: Path, preparer: str, options: dict, overwrite: bool) -> bool:
    """Claim ``out`` for this preparation, or refuse it; returns whether to rewrite every file.

    ``out`` may be new, empty, or a dataset this preparer wrote before with the same options (the run then
    resumes: what is there is kept).  Different options need ``--overwrite``; a folder that holds anything
    else is never touched.  An ``--overwrite`` run that was interrupted left files of the old options among
    the new ones, so the run that resumes it rewrites every file too.
    """
    manifest = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    acquire(out)  # one writer per folder
    if out.is_dir() and any(out.iterdir()):
        if not manifest.is_file():
            raise UserError(f"--out: {out} exists and is not empty (and is not a prepared dataset); "
                            f"choose a new folder")
        previous = read_json(manifest)
        if previous.get("preparer") != preparer:
            kind = previous.get("preparer") or previous.get("generator") or "unknown"
            raise UserError(f"--out: {out} holds another dataset ({kind}), not a {preparer} preparation; "
                            f"choose a new folder")
        before = previous.get("options") or {}
        changed = sorted(k for k in set(options) | set(before)
                         if k not in LOCATION_KEYS and options.get(k) != before.get(k))
        if changed and not overwrite:
            raise UserError(f"--out: {out} was prepared with other options ({', '.join(changed)}); "
                            f"pass --overwrite to redo it with these")
        if previous.get("status") != "complete" and previous.get("overwrite") and not overwrite:
            log.info("%s: an interrupted --overwrite run is finished with --overwrite", out)
            overwrite = True
    write_json(manifest, {"preparer": preparer, "status": "incomplete", "options": options, "overwrite": overwrite})
    return overwrite


def finish_output(out: Path, preparer: str, plan: Preparation, writer: Writer) -> dict:
    """Rewrite the manifest as complete, with the classes and the counts per split."""
    record = {
        "modality": "image", "preparer": preparer, "status": "complete", "options": plan.options, "classes": plan.classes,
        "splits": {s: {"images": c.images, "masked": c.masked, "per_class": c.per_class}
                   for s, c in writer.splits.items()},
        "notes": plan.notes,
    }
    if plan.class_names:
        record["class_names"] = plan.class_names
    write_json(out / MANIFEST, record)
    return record


def summary_lines(out: Path, preparer: str, classes: list[str], writer: Writer, notes: dict,
                  no_mask_note: str | None = None) -> list[str]:
    shown = ", ".join(classes[:3]) + (f", ... {classes[-1]}" if len(classes) > 3 else "")
    lines = [f"prepared {preparer} in {out}", f"  classes: {len(classes)} ({shown})"]
    for split, c in writer.splits.items():
        frac = 100.0 * c.masked / c.images if c.images else 0.0
        line = f"  {split}: {c.images} images, {c.masked} with a mask ({frac:.1f}%)"
        if c.images > c.masked and no_mask_note:
            line += f"; {c.images - c.masked} without: {no_mask_note}"
        lines.append(line)
        empty = [cls for cls in classes if not c.per_class.get(cls)]
        if empty:
            lines.append(f"  warning: {split} has no images of {len(empty)} class(es): {', '.join(empty[:5])}"
                         + (" ..." if len(empty) > 5 else "") + "; its class folders alone would number the labels "
                         "differently, load it with the class list of dataset.json")
    for key, value in notes.items():
        if value:
            lines.append(f"  {key.replace('_', ' ')}: {value}")
    lines.append(f"  files: {writer.written} images written, {writer.present} already there")
    return lines
