"""What a dataset root is, without torch: the image extensions a split lists and the kind of dataset a root holds
(kept apart from :mod:`kdq.function.data.folder` so that the preparers' ``--help`` does not import torch)."""
from __future__ import annotations

from pathlib import Path

from kdq.function.io.rundir import DATASET_GENERATORS, DATASET_JSON, read_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
DATASET_KINDS = ("embedded", "cub", "voc", "ilsvrc")


def dataset_kind(root: Path) -> str | None:
    """What a dataset root holds, from its ``dataset.json``: ``embedded`` (make_dataset), ``cub``, ``voc`` or
    ``ilsvrc`` (prepare_data); None for a folder kdq did not write (the defaults that depend on the kind then
    take their general value)."""
    manifest = read_json(Path(root) / DATASET_JSON)
    if manifest.get("generator") in DATASET_GENERATORS:  # images, token sequences or point clouds
        return "embedded"
    kind = manifest.get("preparer")
    return kind if kind in DATASET_KINDS else None
