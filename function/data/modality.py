"""The modality of a study — ``image``, ``text`` or ``points`` — and what each stage reads for it.

A dataset root says its modality in ``dataset.json`` (``"modality"``; a root without one holds images); a stage's
``--modality`` (default: the dataset's) must agree with it and with the architecture's
(:data:`kdq.models.ARCH_MODALITY`).  :data:`MODALITIES` maps each to a :class:`Modality`: how a training stage reads
its splits and batches them, and which builder options the data fix (a text net's vocabulary size and maximum
length).  Images keep the folder layout of docs/data.md and everything as it was; tokens and points read the layouts
of :mod:`kdq.function.data.text` and :mod:`kdq.function.data.points`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kdq.function.cli import UserError

MODALITY_NAMES = ("image", "text", "points")


def dataset_modality(root: Path) -> str:
    """The modality ``root``'s dataset.json names (``image`` without one, or without the key)."""
    path = Path(root) / "dataset.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "image"
    value = manifest.get("modality", "image") if isinstance(manifest, dict) else "image"
    if value not in MODALITY_NAMES:
        raise UserError(f"--data: {path} names modality {value!r}; kdq knows {', '.join(MODALITY_NAMES)}")
    return value


def data_modality(flag: str | None, root: Path) -> str:
    """The dataset's modality, which ``--modality`` (when given) must name (a UserError otherwise)."""
    data = dataset_modality(root)
    if flag is not None and flag != data:
        raise UserError(f"--modality {flag} but {Path(root) / 'dataset.json'} describes a {data} dataset")
    return data


def resolve_modality(flag: str | None, root: Path, arch_modality: str, arch: str) -> str:
    """The study's modality: ``--modality`` (default: the dataset's), checked against the dataset and the
    architecture (one UserError each)."""
    data = data_modality(flag, root)
    if arch_modality != data:
        raise UserError(f"--arch {arch} takes {arch_modality} inputs, and {root} holds a {data} dataset: pick an "
                        f"architecture for {data} (kdq.models.ARCH_MODALITY)")
    return data


class Pairs:
    """``(input, label)`` items of a text or point dataset (whose items carry foreground flags too), for training."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.classes, self.names, self.targets = dataset.classes, dataset.names, dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        return item[0], item[1]


@dataclass(frozen=True)
class Modality:
    """What the training stages do for one modality: read a split (``read(root, split, classes, flag)``) and the
    builder options the training split fixes (``options(dataset)``)."""

    name: str
    read: Callable[..., Any]
    options: Callable[[Any], dict[str, Any]]


def _read_text(root: Path, split: str, classes=None, flag: str = "--split", vocab=None):
    from kdq.function.data.text import TextDataset

    return _split_or_error(lambda: TextDataset(root, split, vocab=vocab), root, split, flag, classes)


def _read_points(root: Path, split: str, classes=None, flag: str = "--split", vocab=None):
    from kdq.function.data.points import PointDataset

    return _split_or_error(lambda: PointDataset(root, split), root, split, flag, classes)


def _split_or_error(read, root: Path, split: str, flag: str, classes):
    from kdq.function.data.files import UnreadableFile

    try:
        dataset = read()
    except FileNotFoundError:
        raise UserError(f"{flag}: split {split!r} not found in {root}") from None
    except UnreadableFile as exc:
        raise UserError(str(exc)) from None
    if classes is not None and dataset.classes != classes:
        raise UserError(f"{flag}: {root} split {split!r} has other classes than the training split")
    return dataset


def vocab_digest(vocab) -> str:
    """The SHA-256 of a vocabulary (its tokens by id, one per line): two datasets map words to the same ids when
    their digests agree."""
    import hashlib

    return hashlib.sha256("".join(f"{token}\n" for token in vocab).encode("utf-8")).hexdigest()


def _text_options(dataset) -> dict[str, Any]:
    return {"vocab_size": len(dataset.vocab), "max_length": dataset.max_length}


MODALITIES: dict[str, Modality] = {
    "text": Modality("text", _read_text, _text_options),
    "points": Modality("points", _read_points, lambda dataset: {}),
}
