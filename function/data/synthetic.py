"""The embedded dataset: seeded synthetic images with exact foreground masks.

A class is defined by its foreground object alone: a shape (disk, square, ...) in a colour family
(warm, cool, ...), drawn at a random position, scale and rotation.  The background is textured
clutter — a smooth colour field, pixel noise and small distractor shapes in any colour — that carries
no class information, so a net that relies on background is measurably worse.  The object is drawn
last, so its mask is exactly the set of pixels showing it.

Every image comes from its own random stream ``(seed, split, index)``: the data are bit-identical for
a seed, whatever the order or the number of images generated.
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


def write_dataset(out: Path, seed: int, size: int, num_classes: int, per_class: dict[str, int],
                  show_progress: bool = True) -> None:
    """Generate into a temporary sibling folder, then move it into place (never half-written)."""
    names = class_names(num_classes)
    with atomic_dir(out) as tmp:
        total = sum(per_class.values()) * num_classes
        with progress(total=total, desc="images", enabled=show_progress) as bar:
            for split, n in per_class.items():
                for label, cls in enumerate(names):
                    (tmp / split / cls).mkdir(parents=True)
                    (tmp / "seg" / split / cls).mkdir(parents=True)
                    for k in range(n):
                        index = label * n + k
                        image, mask = render(image_rng(seed, split, index), label, num_classes, size)
                        stem = f"img_{index:05d}"
                        Image.fromarray(image).save(tmp / split / cls / f"{stem}.png")
                        Image.fromarray(mask.astype("uint8") * 255).save(tmp / "seg" / split / cls / f"{stem}.png")
                        bar.update()
        write_json(tmp / DATASET_JSON, {"generator": SYNTHETIC_GENERATOR, "seed": seed, "image_size": size,
                                        "classes": names, "per_class": per_class, "style": Style().__dict__})
