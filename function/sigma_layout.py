"""The on-disk layout of a sigma run (SPEC §4), shared by the sigma stage (writer) and the metrics
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

from pathlib import Path

import numpy as np

from .atomic import write_text

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
    """Non-empty lines of a name list (missing file → empty list)."""
    if not Path(path).is_file():
        return []
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def write_names(path: Path, names: list[str]) -> None:
    write_text(Path(path), "".join(f"{n}\n" for n in names))


def load_array(run: Path, index: int, name: str) -> np.ndarray:
    """One of an image's arrays, loaded without pickle."""
    return np.load(array_path(run, index, name), allow_pickle=False)
