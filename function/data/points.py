"""Point clouds: the embedded point-cloud dataset (seeded scenes with exact foreground points) and its reader.

A class is defined by its object alone: a shape (sphere, cube, cone, torus, cylinder) whose **foreground** points
are sampled on its surface (a little sensor noise, and a density that varies over the surface: denser towards a
random direction, as a scanner sees one side better).  The **background** carries no class information: a ground
plane patch under the object and 1 to 3 Gaussian blobs beside it, of the same law for every class.  Each scene has a
random pose (a rotation about the vertical axis z, a small tilt, a scale and a translation) and a foreground share
drawn in ``foreground_share`` (0.4–0.7); the cloud of ``P`` points is then centred on its mean, scaled into the
unit sphere (largest norm 1) and shuffled.

Every cloud comes from its own random stream ``numpy.random.default_rng([seed, split id, index])`` (the split ids
of :data:`kdq.function.data.synthetic.SPLIT_IDS`): the files are byte-identical for a seed.

Layout (docs/data.md, "Point clouds")::

    ROOT/dataset.json                       {"modality": "points", "generator": "kdq.synthetic_points",
                                             "classes": [...], "points": 128, "splits": {...}, ...}
    ROOT/<split>/<class>/<stem>.npy         (P, 3) float32 coordinates
    ROOT/seg/<split>/<class>/<stem>.npy     (P,) uint8 foreground flags (1 = foreground)

Only ``modality``, ``classes`` and (when present) ``points`` of dataset.json are read back.
:func:`read_point_split` returns the checked clouds of a split (of any sizes, unless dataset.json fixes
``points``), :class:`PointDataset` serves them as tensors (one size per split).  Nothing here imports torch at
import time: :class:`PointDataset` imports it when it serves an item.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kdq.function.cli import UserError
from kdq.function.data.files import UnreadableFile
from kdq.function.data.synthetic import SPLIT_IDS
from kdq.function.data.text import read_manifest
from kdq.function.io.atomic import atomic_dir, write_json
from kdq.function.io.rundir import DATASET_JSON, POINTS_GENERATOR
from kdq.function.progress import progress

MODALITY = "points"
SEG_DIR = "seg"
SUFFIX = ".npy"
DEFAULT_CLASSES, DEFAULT_POINTS = 4, 128  # the generator's defaults (make_dataset --modality points uses these)
DEFAULT_PER_CLASS = {"teacher": 300, "train": 60, "val": 60}
MIN_POINTS = 16  # the generator's least cloud size (a foreground, a plane and up to 3 blobs need a few points each)

SHAPES = ("sphere", "cube", "cone", "torus", "cylinder")  # the first K are the classes: the cylinder, which
# PointNet confuses with the sphere at 128 points (measured: 52 of 60 validation cylinders), comes last
# the shapes' sizes in shape coordinates (z is the vertical axis): each fits in a ball of radius about 1
SPHERE_RADIUS = 1.0
CUBE_HALF = 0.75  # half the side
CYLINDER_RADIUS, CYLINDER_HALF = 0.6, 0.9  # radius, half the height (closed: two caps)
CONE_RADIUS, CONE_HALF = 0.8, 0.8  # base radius, half the height (base at z = -half, apex at z = +half; closed)
TORUS_MAJOR, TORUS_MINOR = 0.75, 0.3


@dataclass(frozen=True)
class PointStyle:
    """Knobs of the generator; lengths are in shape coordinates (multiplied by the scene's scale).  The clutter is
    kept clear of the object (a blob's centre ≥ 1.5 away, 3 std ≤ 0.45) but not far: with 1–3 blobs 1.6–2.4 away, a
    plane 1.8 wide and 40–70 % foreground, PointNet's max-pooled fc1 followed the far clutter (bg − fg entropy < 0
    on 79 % of the train clouds for a teacher at 83 % val top-1); at these defaults the demo's teacher reaches 85 %
    and the shape is kept more than the clutter on 23 % of the clouds (measured on 48 clouds)."""
    scale: tuple[float, float] = (0.6, 1.4)
    tilt: float = 0.26  # largest tilt about a horizontal axis, radians (15 degrees)
    translation: float = 1.0  # the object's centre is uniform in [-t, t]^3
    foreground_share: tuple[float, float] = (0.5, 0.8)
    surface_noise: float = 0.01  # std of the foreground points' offset from the surface
    density_floor: float = 0.15  # the least relative density on the surface (1.15 at its densest)
    oversample: int = 4  # uniform candidates per foreground point, thinned to the non-uniform density
    plane_gap: float = 0.1  # the ground plane lies this far below the object's lowest point
    plane_half_width: float = 1.0
    plane_noise: float = 0.01
    plane_share: tuple[float, float] = (0.4, 0.7)  # of the background points
    blobs: tuple[int, int] = (1, 2)
    blob_distance: tuple[float, float] = (1.5, 1.9)  # horizontal distance of a blob's centre from the object's
    blob_height: tuple[float, float] = (0.0, 1.2)  # above the plane
    blob_std: tuple[float, float] = (0.06, 0.15)


@dataclass(frozen=True)
class Cloud:
    """One generated scene: the saved points and flags, and the pose that maps shape coordinates to them
    (``points = (scale * shape @ rotation.T + translation - centre) / radius``, before the shuffle)."""
    points: np.ndarray  # (P, 3) float32
    foreground: np.ndarray  # (P,) bool
    rotation: np.ndarray  # (3, 3)
    scale: float
    translation: np.ndarray  # (3,)
    centre: np.ndarray  # (3,): the mean of the posed cloud
    radius: float  # the largest norm of the centred cloud

    def shape_coordinates(self, points: np.ndarray) -> np.ndarray:
        """``points`` of this cloud taken back to the shape's own coordinates (the inverse of the pose)."""
        world = np.asarray(points, dtype=np.float64) * self.radius + self.centre
        return (world - self.translation) @ self.rotation / self.scale


@dataclass(frozen=True)
class PointRecord:
    """One cloud of a split: ``name`` is its path relative to the split root (``<class>/<stem>.npy``), ``label``
    the class index (into dataset.json's ``classes``)."""
    name: str
    label: int
    points: np.ndarray  # (N, 3) float32
    foreground: np.ndarray  # (N,) bool


# ---- shapes ---------------------------------------------------------------------------------------------------
def max_classes() -> int:
    return len(SHAPES)


def class_names(num_classes: int) -> list[str]:
    """``00_sphere``, ``01_cube``, ...: the first ``num_classes`` shapes."""
    if not 2 <= num_classes <= max_classes():
        raise ValueError(f"num_classes must be in [2, {max_classes()}], got {num_classes}")
    return [f"{c:02d}_{SHAPES[c]}" for c in range(num_classes)]


def _by_area(rng: np.random.Generator, n: int, areas: list[float]) -> np.ndarray:
    """Which of the surface's parts each of ``n`` uniform points falls on, in proportion to the parts' areas."""
    a = np.asarray(areas, dtype=np.float64)
    return rng.choice(len(a), size=n, p=a / a.sum())


def sample_surface(shape: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` points drawn uniformly (by area) on the surface of ``shape``, shape coordinates, float64 (n, 3)."""
    if shape == "sphere":
        v = rng.normal(size=(n, 3))
        return SPHERE_RADIUS * v / np.linalg.norm(v, axis=1, keepdims=True)
    if shape == "cube":
        face = rng.integers(6, size=n)
        p = rng.uniform(-CUBE_HALF, CUBE_HALF, size=(n, 3))
        p[np.arange(n), face // 2] = np.where(face % 2 == 0, -CUBE_HALF, CUBE_HALF)
        return p
    phi = rng.uniform(0, 2 * math.pi, size=n)
    if shape == "cylinder":
        a, b = CYLINDER_RADIUS, CYLINDER_HALF
        part = _by_area(rng, n, [2 * math.pi * a * 2 * b, math.pi * a * a, math.pi * a * a])
        u = rng.uniform(size=n)
        rho = np.where(part == 0, a, a * np.sqrt(u))
        z = np.where(part == 0, b * (2 * u - 1), np.where(part == 1, -b, b))
    elif shape == "cone":
        a, b = CONE_RADIUS, CONE_HALF
        slant = math.hypot(a, 2 * b)
        part = _by_area(rng, n, [math.pi * a * slant, math.pi * a * a])
        t = np.sqrt(rng.uniform(size=n))  # lateral: distance from the apex / slant, density ∝ t
        rho = a * t  # (the base: radius a·sqrt(u), the same formula)
        z = np.where(part == 0, b - 2 * b * t, -b)
    elif shape == "torus":
        theta = _torus_angles(rng, n)
        rho, z = TORUS_MAJOR + TORUS_MINOR * np.cos(theta), TORUS_MINOR * np.sin(theta)
    else:
        raise ValueError(f"unknown shape {shape!r} (shapes: {', '.join(SHAPES)})")
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1)


def _torus_angles(rng: np.random.Generator, n: int) -> np.ndarray:
    """Tube angles of ``n`` uniform points on the torus: density ∝ R + r cos θ, by rejection."""
    out = np.empty(0)
    while len(out) < n:
        theta = rng.uniform(0, 2 * math.pi, size=2 * n)
        keep = rng.uniform(size=2 * n) * (TORUS_MAJOR + TORUS_MINOR) < TORUS_MAJOR + TORUS_MINOR * np.cos(theta)
        out = np.concatenate([out, theta[keep]])
    return out[:n]


def _segment_distance(q: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance of 2-D points ``q`` (n, 2) to the segment from ``a`` to ``b``."""
    a_, d = np.asarray(a), np.asarray(b) - np.asarray(a)
    t = np.clip(((q - a_) @ d) / (d @ d), 0.0, 1.0)
    return np.linalg.norm(q - a_ - t[:, None] * d, axis=1)


def surface_distance(shape: str, points: np.ndarray) -> np.ndarray:
    """The distance of each of ``points`` (n, 3), shape coordinates, to the surface of ``shape`` (exact)."""
    p = np.asarray(points, dtype=np.float64)
    rho, z = np.hypot(p[:, 0], p[:, 1]), p[:, 2]
    if shape == "sphere":
        return np.abs(np.linalg.norm(p, axis=1) - SPHERE_RADIUS)
    if shape == "cube":
        return np.abs(_box_sdf(np.abs(p) - CUBE_HALF))
    if shape == "cylinder":
        return np.abs(_box_sdf(np.stack([rho - CYLINDER_RADIUS, np.abs(z) - CYLINDER_HALF], axis=1)))
    if shape == "cone":
        q = np.stack([rho, z], axis=1)
        a, b = CONE_RADIUS, CONE_HALF
        return np.minimum(_segment_distance(q, (0.0, -b), (a, -b)), _segment_distance(q, (a, -b), (0.0, b)))
    if shape == "torus":
        return np.abs(np.hypot(rho - TORUS_MAJOR, z) - TORUS_MINOR)
    raise ValueError(f"unknown shape {shape!r} (shapes: {', '.join(SHAPES)})")


def _box_sdf(q: np.ndarray) -> np.ndarray:
    """Signed distance to a box from ``q`` = |p| - half sides (n, k): negative inside."""
    return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)


# ---- scenes ---------------------------------------------------------------------------------------------------
def cloud_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def rotation(yaw: float, tilt: float, tilt_axis: float) -> np.ndarray:
    """A tilt by ``tilt`` about the horizontal axis at angle ``tilt_axis``, then a rotation by ``yaw`` about z."""
    c, s = math.cos(yaw), math.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    k = np.array([math.cos(tilt_axis), math.sin(tilt_axis), 0.0])  # Rodrigues about the unit axis k
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    tilt_m = np.eye(3) + math.sin(tilt) * kx + (1 - math.cos(tilt)) * kx @ kx
    return rz @ tilt_m


def foreground_points(shape: str, rng: np.random.Generator, n: int, style: PointStyle) -> np.ndarray:
    """``n`` points on ``shape`` (shape coordinates) with a non-uniform density and sensor noise: uniform candidates
    thinned with weights ``density_floor + ((1 + u·d) / 2)²`` (``u`` the candidate's direction from the centre,
    ``d`` a random direction)."""
    candidates = sample_surface(shape, rng, style.oversample * n)
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    u = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    w = style.density_floor + ((1 + u @ d) / 2) ** 2
    chosen = rng.choice(len(candidates), size=n, replace=False, p=w / w.sum())
    return candidates[chosen] + rng.normal(0, style.surface_noise, size=(n, 3))


def background_points(rng: np.random.Generator, n: int, ground: float, centre: np.ndarray, scale: float,
                      style: PointStyle) -> np.ndarray:
    """``n`` clutter points (world coordinates): a plane patch at height ``ground`` under the object's ``centre``
    and 1–3 Gaussian blobs beside it; nothing here depends on the class."""
    n_plane = min(n - 1, max(1, round(n * rng.uniform(*style.plane_share))))
    half = style.plane_half_width * scale
    plane = np.column_stack([centre[0] + rng.uniform(-half, half, n_plane),
                             centre[1] + rng.uniform(-half, half, n_plane),
                             ground + rng.normal(0, style.plane_noise * scale, n_plane)])
    n_blob = n - n_plane
    k = min(n_blob, int(rng.integers(style.blobs[0], style.blobs[1] + 1)))
    sizes = 1 + rng.multinomial(n_blob - k, rng.dirichlet(np.ones(k)))
    blobs = []
    for size in sizes:
        angle, dist = rng.uniform(0, 2 * math.pi), scale * rng.uniform(*style.blob_distance)
        mean = np.array([centre[0] + dist * math.cos(angle), centre[1] + dist * math.sin(angle),
                         ground + scale * rng.uniform(*style.blob_height)])
        blobs.append(mean + rng.normal(0, scale * rng.uniform(*style.blob_std), size=(size, 3)))
    return np.concatenate([plane, *blobs])


def render_cloud(rng: np.random.Generator, label: int, num_classes: int, n_points: int,
                 style: PointStyle = PointStyle()) -> Cloud:
    """One scene of class ``label``: ``n_points`` points (module docstring)."""
    if n_points < MIN_POINTS:
        raise ValueError(f"points must be at least {MIN_POINTS}, got {n_points}")
    class_names(num_classes)  # the range check of num_classes
    if not 0 <= label < num_classes:
        raise ValueError(f"label must be in [0, {num_classes}), got {label}")
    shape = SHAPES[label]
    n_fg = min(n_points - 2, max(1, round(n_points * rng.uniform(*style.foreground_share))))
    rot = rotation(rng.uniform(0, 2 * math.pi), rng.uniform(0, style.tilt), rng.uniform(0, 2 * math.pi))
    scale = rng.uniform(*style.scale)
    translation = rng.uniform(-style.translation, style.translation, size=3)
    fg = scale * foreground_points(shape, rng, n_fg, style) @ rot.T + translation
    ground = fg[:, 2].min() - style.plane_gap * scale
    bg = background_points(rng, n_points - n_fg, ground, translation, scale, style)
    world = np.concatenate([fg, bg])
    centre = world.mean(axis=0)
    radius = float(np.linalg.norm(world - centre, axis=1).max())
    flags = np.arange(n_points) < n_fg
    order = rng.permutation(n_points)
    points = ((world - centre) / radius)[order].astype(np.float32)
    return Cloud(points, flags[order], rot, float(scale), translation, centre, radius)


def split_clouds(label: int, n: int) -> list[tuple[int, str]]:
    """(index in the split, file stem) of the ``n`` clouds of class ``label`` in a split."""
    return [(label * n + k, f"pts_{label * n + k:05d}") for k in range(n)]


def dataset_files(manifest: dict) -> list[str]:
    """Every cloud and flag file (relative paths) that :func:`write_point_dataset` wrote for the dataset.json
    ``manifest``; [] for a manifest it did not write."""
    classes, per_class = manifest.get("classes"), manifest.get("per_class")
    if manifest.get("generator") != POINTS_GENERATOR or not isinstance(classes, list) or \
            not isinstance(per_class, dict) or not all(isinstance(c, str) for c in classes) or \
            not all(s in SPLIT_IDS and type(n) is int and n > 0 for s, n in per_class.items()):
        return []
    return [f"{top}{split}/{cls}/{stem}{SUFFIX}" for split, n in per_class.items()
            for label, cls in enumerate(classes) for _, stem in split_clouds(label, n) for top in ("", f"{SEG_DIR}/")]


def write_point_dataset(out: Path, seed: int, num_classes: int = DEFAULT_CLASSES,
                        per_class: dict[str, int] | None = None, points: int = DEFAULT_POINTS,
                        show_progress: bool = True, style: PointStyle = PointStyle()) -> None:
    """Generate the embedded point-cloud dataset into ``out`` (a temporary sibling folder moved into place: never
    half-written).  ``per_class``: clouds per class and split (default: :data:`DEFAULT_PER_CLASS`)."""
    per_class = dict(per_class or DEFAULT_PER_CLASS)
    unknown = sorted(set(per_class) - set(SPLIT_IDS))
    if unknown:
        raise ValueError(f"per_class: unknown split(s) {unknown} (splits: {sorted(SPLIT_IDS)})")
    if points < MIN_POINTS:
        raise ValueError(f"points must be at least {MIN_POINTS}, got {points}")
    names = class_names(num_classes)
    with atomic_dir(out) as tmp:
        with progress(total=sum(per_class.values()) * num_classes, desc="clouds", enabled=show_progress) as bar:
            for split, n in per_class.items():
                for label, cls in enumerate(names):
                    (tmp / split / cls).mkdir(parents=True)
                    (tmp / SEG_DIR / split / cls).mkdir(parents=True)
                    for index, stem in split_clouds(label, n):
                        cloud = render_cloud(cloud_rng(seed, split, index), label, num_classes, points, style)
                        np.save(tmp / split / cls / f"{stem}{SUFFIX}", cloud.points, allow_pickle=False)
                        np.save(tmp / SEG_DIR / split / cls / f"{stem}{SUFFIX}", cloud.foreground.astype(np.uint8),
                                allow_pickle=False)
                        bar.update()
        write_json(tmp / DATASET_JSON, {
            "modality": MODALITY, "generator": POINTS_GENERATOR, "seed": seed, "classes": names, "points": points,
            "splits": {s: n * num_classes for s, n in per_class.items()}, "per_class": per_class,
            "foreground": f"{SEG_DIR}/<split>/<class>/<stem>{SUFFIX}", "style": asdict(style)})


# ---- reading a dataset root ----------------------------------------------------------------------------------
def _load(path: Path, what: str) -> np.ndarray:
    """A numeric ``.npy`` array, or an UnreadableFile naming ``path``."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UnreadableFile(f"{what} {path} cannot be read ({exc or type(exc).__name__})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise UnreadableFile(f"{what} {path} does not hold a numeric array")
    return array


def read_cloud(path: Path, expected: int | None = None) -> np.ndarray:
    """The coordinates of one cloud file as float32 (N, 3), checked (``expected``: the N dataset.json fixes)."""
    array = _load(path, "cloud")
    if array.ndim != 2 or array.shape[1] != 3:
        raise UnreadableFile(f"cloud {path} has shape {array.shape}, not (P, 3)")
    if array.shape[0] == 0:
        raise UnreadableFile(f"cloud {path} has zero points")
    with np.errstate(over="ignore", invalid="ignore"):  # a value beyond float32 becomes inf, refused below
        coords = array.astype(np.float32)
    if not np.isfinite(coords).all():
        raise UnreadableFile(f"cloud {path} has NaN or infinite coordinates (in float32)")
    if expected is not None and len(coords) != expected:
        raise UnreadableFile(f"cloud {path} has {len(coords)} points, dataset.json says \"points\": {expected}")
    return coords


def read_flags(path: Path, n_points: int, cloud: Path) -> np.ndarray:
    """The foreground flags of a cloud of ``n_points`` points as bool (N,), checked."""
    if not path.is_file():
        raise UnreadableFile(f"foreground file {path} of cloud {cloud} is missing")
    flags = _load(path, "foreground file")
    if flags.shape != (n_points,):
        raise UnreadableFile(f"foreground file {path} has shape {flags.shape}, its cloud has {n_points} points "
                             f"(one flag per point: ({n_points},))")
    bad = flags[(flags != 0) & (flags != 1)]
    if bad.size:
        raise UnreadableFile(f"foreground file {path}: flags must be 0 or 1, got {bad[0].item()!r}")
    return flags.astype(bool)


def manifest_points(manifest: dict, root: Path) -> int | None:
    """dataset.json's ``points`` (a positive integer) or None when it does not fix one."""
    value = manifest.get("points")
    if value is not None and (type(value) is not int or value < 1):
        raise UnreadableFile(f"{Path(root) / DATASET_JSON}: \"points\" must be a positive integer, got {value!r}")
    return value


def split_files(root: Path, split: str, classes: list[str]) -> list[tuple[str, int, Path]]:
    """(name, label, path) of each cloud file of ``split``, class by class in dataset.json's order."""
    split_dir = Path(root) / split
    if not split_dir.is_dir() or split == SEG_DIR:
        found = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and p.name != SEG_DIR)
        raise UserError(f"--split: {split_dir} not found (splits here: {', '.join(found) or 'none'})")
    other = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes)
    if other:
        raise UserError(f"--data: {split_dir} holds class folder(s) that dataset.json does not list: "
                        f"{', '.join(other)}")
    files = [(f"{cls}/{p.name}", label, p) for label, cls in enumerate(classes) if (split_dir / cls).is_dir()
             for p in sorted((split_dir / cls).iterdir()) if p.suffix == SUFFIX and p.is_file()]
    if not files:
        raise UserError(f"--data: {split_dir} holds no clouds (<class>/<stem>{SUFFIX})")
    return files


def read_point_split(root: Path, split: str) -> list[PointRecord]:
    """The checked clouds of ``split`` of the point-cloud dataset at ``root`` with their foreground flags
    (``ROOT/seg/<split>/<class>/<stem>.npy``); clouds may differ in size unless dataset.json fixes ``points``."""
    root = Path(root)
    manifest = read_manifest(root, MODALITY)
    expected = manifest_points(manifest, root)
    records = []
    for name, label, path in split_files(root, split, manifest["classes"]):
        coords = read_cloud(path, expected)
        flags = read_flags(root / SEG_DIR / split / name, len(coords), path)
        records.append(PointRecord(name, label, coords, flags))
    return records


class PointDataset:
    """The clouds of one split as a map-style torch dataset: ``dataset[i]`` → ``(points FloatTensor (P, 3), label,
    foreground BoolTensor (P,))``; every cloud of the split must have the same ``P``.  ``names[i]`` is cloud
    ``i``'s path relative to the split root."""

    def __init__(self, root: Path, split: str):
        self.root, self.split = Path(root), split
        self.classes: list[str] = read_manifest(self.root, MODALITY)["classes"]
        records = read_point_split(self.root, split)
        sizes = sorted({len(r.points) for r in records})
        if len(sizes) > 1:
            first = {n: next(r.name for r in records if len(r.points) == n) for n in sizes[:2]}
            raise UserError(f"--data: split {split!r} of {self.root} holds clouds of {len(sizes)} sizes "
                            f"({', '.join(f'{n} points: {first[n]}' for n in sizes[:2])}"
                            f"{', ...' if len(sizes) > 2 else ''}); a PointDataset needs one size per split: "
                            "resample the clouds to one number of points")
        self.points = np.stack([r.points for r in records])
        self.foreground = np.stack([r.foreground for r in records])
        self.names = [r.name for r in records]
        self.targets = [r.label for r in records]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        import torch

        return torch.tensor(self.points[i]), self.targets[i], torch.tensor(self.foreground[i])
