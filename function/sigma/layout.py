"""The on-disk layout of a sigma run (docs/method.md §4), shared by the sigma stage (writer) and the metrics
stage (reader), so runs of the original code and of kdq are interchangeable.

    <run>/full_name_list.txt         one image path per line, relative to the split root
    <run>/effect_name_list.txt       the effective images
    <run>/non_effect_name_list.txt   the non-effective ones
    <run>/img_<i>_effect/npy_files/  per image, i indexes full_name_list.txt:
        best_sigma_entropy.npy (K, 1, g, g)  σ* itself (a value ≤ 0 marks a failed fit)
        entropy.npy, feature_loss.npy, penalty_loss.npy (K, 1, T)
        sigma_f_matrix.npy (K, 1)
K follows the checkpoint schedule, oldest first.  kdq also writes <run>/run.json (settings, the epochs
of the K entries).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kdq.function.cli import UserError
from kdq.function.io.atomic import atomic_dir, write_json, write_text

FULL_LIST = "full_name_list.txt"
EFFECT_LIST = "effect_name_list.txt"
NON_EFFECT_LIST = "non_effect_name_list.txt"
ARRAYS = ("best_sigma_entropy", "entropy", "feature_loss", "penalty_loss", "sigma_f_matrix")


def image_dir(run: Path, index: int) -> Path:
    """``<run>/img_<index>_effect/npy_files``."""
    return Path(run) / f"img_{index}_effect" / "npy_files"


def array_path(run: Path, index: int, name: str) -> Path:
    return image_dir(run, index) / f"{name}.npy"


def read_names(path: Path) -> list[str]:
    """Non-empty lines of a name list (missing file → empty list); a list that is not UTF-8 is a UserError."""
    if not Path(path).is_file():
        return []
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not UTF-8 text (byte {raw[exc.start]:#04x}); the list is damaged "
                        "or not a name list") from None
    return [line.strip() for line in text.split("\n") if line.strip()]


def write_names(path: Path, names: list[str]) -> None:
    write_text(Path(path), "".join(f"{n}\n" for n in names))


# ---- kdq additions (sigma stage writer; readers may use them too) -------------------------------
EFFECT_SUFFIX = "_effect"
NON_EFFECT_SUFFIX = "_non_effect"  # the original code's name for an image found non-effective
FIT_JSON = "fit.json"  # kdq: per-image details beside npy_files/ (best step, λ, reason, ...)


def image_folder(run: Path, index: int, effective: bool = True) -> Path:
    """``<run>/img_<index>_effect`` or, for a non-effective image, ``<run>/img_<index>_non_effect``."""
    return Path(run) / f"img_{index}{EFFECT_SUFFIX if effective else NON_EFFECT_SUFFIX}"


def write_image(run: Path, index: int, effective: bool, arrays: Mapping[str, np.ndarray],
                info: Mapping[str, Any]) -> None:
    """Write ``img_<index>_{effect,non_effect}/`` whole: ``npy_files/<name>.npy`` for each of :data:`ARRAYS`
    and ``fit.json`` (``info``), in a temporary folder renamed into place (never half-written)."""
    with atomic_dir(image_folder(run, index, effective)) as tmp:
        npy = tmp / "npy_files"
        npy.mkdir()
        for name in ARRAYS:
            with open(npy / f"{name}.npy", "wb") as fh:  # the folder's rename is the atomic step
                np.save(fh, arrays[name], allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
        write_json(tmp / FIT_JSON, info)  # strict JSON: a NaN/inf is null


def finished_images(run: Path) -> dict[int, bool]:
    """``{index: effective}`` of the image folders present in ``run`` (complete by construction:
    kdq writes a folder under a temporary name and renames it)."""
    found: dict[int, bool] = {}
    for p in Path(run).glob("img_*"):
        name = p.name
        if not p.is_dir() or not name.startswith("img_"):
            continue
        if name.endswith(NON_EFFECT_SUFFIX):
            idx, eff = name[4:-len(NON_EFFECT_SUFFIX)], False
        elif name.endswith(EFFECT_SUFFIX):
            idx, eff = name[4:-len(EFFECT_SUFFIX)], True
        else:
            continue
        if idx.isdigit():
            found[int(idx)] = found.get(int(idx), False) or eff
    return found


def run_epochs(run: Path) -> list[int] | None:
    """The checkpoint epochs of the K entries, as recorded by kdq in ``<run>/run.json``
    (None for runs of the original code, which do not record them)."""
    try:
        data = json.loads((Path(run) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    epochs = data.get("checkpoints")
    return [int(e) for e in epochs] if isinstance(epochs, list) else None
