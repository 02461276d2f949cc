"""The embedded dataset: seeded synthetic images with exact foreground masks.

A class is defined by its foreground object alone: a shape (disk, square, ...) in a colour family
(warm, cool, ...), drawn at a random position, scale and rotation.  The background is textured
clutter — a smooth colour field, pixel noise and small distractor shapes in any colour — that carries
no class information, so a net that relies on background is measurably worse.  The object is drawn
last, so its mask is exactly the set of pixels showing it.

Every image comes from its own random stream ``(seed, split, index)``: the data are bit-identical for
a seed, whatever the order or the number of images generated.

**Background cue** (``write_dataset(..., cue_splits=("train",))``, ``kdq-data --background-cue``): a planted
shortcut for ``make validate`` (docs/validation.md).  Each image of a cued split gets a square patch — a
white frame around a saturated colour whose hue encodes the class (``hue = label / num_classes``) — at a random
place at least :data:`CUE_CLEARANCE` × the image side away from the object (where the object leaves no such place,
as far as fits), so that it lies on background cells of a σ grid of 16 cells (the bilinear mask rule of
docs/method.md §2 included; ``make validate`` counts any exception).  The patch's pixels are written
as a second mask, ``<root>/cue/<split>/<class>/<stem>.png``.  The cue is drawn from its own random stream
``(seed, split, index, CUE_STREAM)`` after the image is rendered, so a cued image is its clean twin with the patch
pasted on: the object, its mask and the rest of the background are unchanged, and without the option nothing
changes at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kdq.function.io.atomic import atomic_dir, write_json
from kdq.function.io.rundir import DATASET_JSON, SYNTHETIC_GENERATOR
from kdq.function.progress import progress

SHAPES = ("disk", "cross", "square", "triangle", "star", "hexagon")
DISTRACTOR_SHAPES = ("ring", "bar", "disk")
# Colour families as (hue centre in [0, 1), name); an object's hue is jittered ±0.04 around it.
FAMILIES = ((0.0, "red"), (0.6, "blue"), (0.33, "green"), (0.15, "yellow"))
SPLIT_IDS = {"teacher": 1, "train": 2, "val": 3}
CUE_DIR = "cue"  # <root>/cue/<split>/<class>/<stem>.png: the background cue's pixels (> 0)
CUE_SIDE = 1 / 4  # the cue patch's side, a fraction of the image side (16 px at 64 px: at 1/8 the demo's label
#                   net did not use it at all, at 3/16 a little; at 1/4 it is right on 93 % of its cued train images
#                   and on 63 % of their clean twins)
CUE_CLEARANCE = 1 / 8  # least distance (Chebyshev, pixels / image side) between the cue and the object
CUE_FRAME = 1.0  # the grey value of the cue's 1-px frame: white, which neither objects nor distractors have
CUE_STREAM = 7  # the cue's random stream is (seed, split, index, CUE_STREAM): the image's own draws are untouched


def max_classes() -> int:
    return len(SHAPES) * len(FAMILIES)


def class_table(num_classes: int) -> list[tuple[str, int]]:
    """``num_classes`` (shape, family index) pairs: shapes vary fastest, then colour families.

    As few shapes as the colour families allow (8 classes: disk and cross in 4 colours): telling shapes
    apart under rotation and clutter is what a tiny CPU net learns slowly, so it is kept to what the class
    count needs.
    """
    if not 2 <= num_classes <= max_classes():
        raise ValueError(f"num_classes must be in [2, {max_classes()}], got {num_classes}")
    n_shapes = math.ceil(num_classes / len(FAMILIES))
    return [(SHAPES[c % n_shapes], c // n_shapes) for c in range(num_classes)]


def class_names(num_classes: int) -> list[str]:
    return [f"{c:02d}_{FAMILIES[f][1]}_{shape}" for c, (shape, f) in enumerate(class_table(num_classes))]


def shape_mask(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Boolean (size, size) mask of ``shape`` centred at (cx, cy) with the given radius and rotation."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(angle), math.sin(angle)
    u, v = (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    if shape == "disk":
        return rho <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":
        return _polygon(u, v, 3, 0.5)
    if shape == "hexagon":
        return _polygon(u, v, 6, 0.87)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if shape == "star":
        return rho <= 0.6 + 0.4 * np.cos(5 * phi)
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.6)
    if shape == "bar":
        return (np.abs(v) <= 0.18) & (np.abs(u) <= 1.0)
    raise ValueError(f"unknown shape {shape!r}")


def _polygon(u: np.ndarray, v: np.ndarray, sides: int, apothem: float) -> np.ndarray:
    inside = np.ones_like(u, dtype=bool)
    for k in range(sides):
        a = math.pi / 2 + 2 * math.pi * k / sides
        inside &= u * math.cos(a) + v * math.sin(a) <= apothem
    return inside


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


@dataclass(frozen=True)
class Style:
    """Knobs of the generator (defaults make the demo task neither trivial nor hopeless)."""
    object_scale: tuple[float, float] = (0.22, 0.32)  # radius as a fraction of the image side
    distractors: tuple[int, int] = (2, 5)
    distractor_scale: tuple[float, float] = (0.05, 0.12)
    noise: float = 0.06


def render(rng: np.random.Generator, label: int, num_classes: int, size: int,
           style: Style = Style()) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 image of class ``label`` and its exact boolean foreground mask."""
    image, mask, _ = render_scene(rng, label, num_classes, size, style)
    return image, mask


def render_scene(rng: np.random.Generator, label: int, num_classes: int, size: int,
                 style: Style = Style()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`render` plus the uint8 scene without the object (background and distractors)."""
    shape, family = class_table(num_classes)[label]
    image = _background(rng, size, style)
    for _ in range(int(rng.integers(style.distractors[0], style.distractors[1] + 1))):
        d_shape = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
        r = size * rng.uniform(*style.distractor_scale)
        m = shape_mask(d_shape, size, rng.uniform(0, size), rng.uniform(0, size), r, rng.uniform(0, 2 * math.pi))
        image[m] = _distractor_colour(rng)
    r = size * rng.uniform(*style.object_scale)
    margin = 0.8 * r
    cx, cy = rng.uniform(margin, size - margin, size=2)
    mask = shape_mask(shape, size, cx, cy, r, rng.uniform(0, 2 * math.pi))
    hue = (FAMILIES[family][0] + rng.uniform(-0.04, 0.04)) % 1.0
    colour = hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0))
    shading = 1.0 + rng.normal(0, style.noise, size=(size, size, 1))
    scene = _to_uint8(image)
    image[mask] = np.clip(colour * shading[mask], 0, 1)
    return _to_uint8(image), mask, scene


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _distractor_colour(rng: np.random.Generator) -> np.ndarray:
    """Any hue, but less saturated than objects half of the time, so colour alone is not a give-away."""
    return hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 1.0), rng.uniform(0.3, 1.0))


def _background(rng: np.random.Generator, size: int, style: Style) -> np.ndarray:
    """A smooth random colour field plus pixel noise, values in [0, 1]."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    corners = rng.uniform(0.2, 0.7, size=(2, 2, 3))  # bilinear colour field between four corners
    field = (corners[0, 0] * ((1 - ys) * (1 - xs))[..., None] + corners[0, 1] * ((1 - ys) * xs)[..., None]
             + corners[1, 0] * (ys * (1 - xs))[..., None] + corners[1, 1] * (ys * xs)[..., None])
    freq, phase = rng.uniform(2, 6), rng.uniform(0, 2 * math.pi)
    waves = 0.08 * np.sin(2 * math.pi * freq * (xs * rng.uniform(-1, 1) + ys * rng.uniform(-1, 1)) + phase)
    return field + waves[..., None] + rng.normal(0, style.noise, size=(size, size, 3))


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def cue_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The background cue's own stream for image ``index`` of ``split`` (independent of :func:`image_rng`)."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index, CUE_STREAM])


def cue_colour(label: int, num_classes: int) -> np.ndarray:
    """The class code of the cue: a saturated colour of hue ``label / num_classes``, RGB in [0, 1]."""
    return hsv_to_rgb(label / num_classes, 1.0, 1.0)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by ``radius`` pixels in every direction (a square structuring element)."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= \
                mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def cue_places(mask: np.ndarray, side: int, clearance: int) -> np.ndarray:
    """(P, 2) top-left corners (y, x) where a ``side`` × ``side`` patch lies inside the image and at least
    ``clearance`` pixels (Chebyshev) away from every pixel of ``mask``; row-major order."""
    blocked = _dilate(np.asarray(mask, dtype=bool), clearance).astype(np.int64)
    csum = np.pad(blocked.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    n = mask.shape[0] - side + 1
    inside = (csum[side:side + n, side:side + n] - csum[:n, side:side + n]
              - csum[side:side + n, :n] + csum[:n, :n])  # blocked pixels under each placement
    return np.argwhere(inside == 0)


def cue_side(size: int) -> int:
    """The cue patch's side in pixels for an image of side ``size``."""
    return max(3, round(size * CUE_SIDE))


def cue_clearance(size: int) -> int:
    """The cue's preferred distance from the object, in pixels, for an image of side ``size``."""
    return max(1, round(size * CUE_CLEARANCE))


def plant_cue(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, label: int,
              num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with the class-coded background cue pasted on, and the cue's boolean pixel mask.

    The patch (side ``CUE_SIDE`` × the image side, at least 3 px: a 1-px white frame around :func:`cue_colour`)
    goes to a uniformly drawn place among :func:`cue_places` at clearance ``CUE_CLEARANCE`` × the side; where
    an object leaves no such place the clearance shrinks a pixel at a time (never onto the object itself).
    """
    size = image.shape[0]
    side = cue_side(size)
    for clearance in range(cue_clearance(size), -1, -1):
        places = cue_places(mask, side, clearance)
        if len(places):
            break
    else:
        raise ValueError("no background place for the cue: the object covers the image")
    y, x = places[int(rng.integers(len(places)))]
    cue = np.zeros(mask.shape, dtype=bool)
    cue[y:y + side, x:x + side] = True
    patch = np.full((side, side, 3), CUE_FRAME)
    patch[1:-1, 1:-1] = cue_colour(label, num_classes)
    out = image.copy()
    out[y:y + side, x:x + side] = _to_uint8(patch)
    return out, cue


def split_images(label: int, n: int) -> list[tuple[int, str]]:
    """(index in the split, file stem) of the ``n`` images of class ``label`` in a split."""
    return [(label * n + k, f"img_{label * n + k:05d}") for k in range(n)]


MAX_PER_CLASS = 10 ** 6  # a dataset.json recording more per class is not one make_dataset wrote


def dataset_files(manifest: dict) -> list[str]:
    """Every image and mask file (relative paths: ``<split>/``, ``seg/<split>/`` and for a cued split ``cue/<split>/``)
    that :func:`write_dataset` wrote for the dataset.json ``manifest`` (its classes and images per class); [] for a
    manifest it did not write."""
    classes, per_class = manifest.get("classes"), manifest.get("per_class")
    if manifest.get("generator") != SYNTHETIC_GENERATOR or not isinstance(classes, list) or \
            not isinstance(per_class, dict) or not all(isinstance(c, str) for c in classes) or \
            not all(s in SPLIT_IDS and type(n) is int and 0 < n <= MAX_PER_CLASS for s, n in per_class.items()):
        return []
    cue = manifest.get("background_cue")
    cued = cue.get("splits") if isinstance(cue, dict) else None
    cued = cued if isinstance(cued, list) else []
    return [f"{root}{split}/{cls}/{stem}.png" for split, n in per_class.items() for label, cls in enumerate(classes)
            for _, stem in split_images(label, n)
            for root in ("", "seg/") + ((f"{CUE_DIR}/",) if split in cued else ())]


def write_dataset(out: Path, seed: int, size: int, num_classes: int, per_class: dict[str, int],
                  show_progress: bool = True, cue_splits: tuple[str, ...] = ()) -> None:
    """Generate into a temporary sibling folder, then move it into place (never half-written).
    ``cue_splits``: the splits that get the background cue (module docstring); none by default."""
    unknown = sorted(set(cue_splits) - set(per_class))
    if unknown:
        raise ValueError(f"cue_splits: unknown split(s) {unknown} (splits: {sorted(per_class)})")
    names = class_names(num_classes)
    with atomic_dir(out) as tmp:
        total = sum(per_class.values()) * num_classes
        with progress(total=total, desc="images", enabled=show_progress) as bar:
            for split, n in per_class.items():
                for label, cls in enumerate(names):
                    (tmp / split / cls).mkdir(parents=True)
                    (tmp / "seg" / split / cls).mkdir(parents=True)
                    cued = split in cue_splits
                    if cued:
                        (tmp / CUE_DIR / split / cls).mkdir(parents=True)
                    for index, stem in split_images(label, n):
                        image, mask = render(image_rng(seed, split, index), label, num_classes, size)
                        if cued:
                            image, cue = plant_cue(cue_rng(seed, split, index), image, mask, label, num_classes)
                            Image.fromarray(cue.astype("uint8") * 255).save(
                                tmp / CUE_DIR / split / cls / f"{stem}.png")
                        Image.fromarray(image).save(tmp / split / cls / f"{stem}.png")
                        Image.fromarray(mask.astype("uint8") * 255).save(tmp / "seg" / split / cls / f"{stem}.png")
                        bar.update()
        manifest = {"modality": "image", "generator": SYNTHETIC_GENERATOR, "seed": seed, "image_size": size,
                    "classes": names, "per_class": per_class, "style": Style().__dict__}
        if cue_splits:  # only then: the default dataset.json stays byte-identical
            manifest["background_cue"] = cue_manifest(cue_splits, size)
        write_json(tmp / DATASET_JSON, manifest)


def cue_manifest(cue_splits: tuple[str, ...], size: int) -> dict:
    """What dataset.json records of the background cue."""
    return {"splits": sorted(cue_splits), "masks": f"{CUE_DIR}/<split>/<class>/<stem>.png",
            "side_px": cue_side(size), "clearance_px": cue_clearance(size),
            "code": "colour: hue = class index / number of classes, inside a 1-px white frame",
            "stream": CUE_STREAM}
