"""Image transforms of docs/method.md §1, as the original code's datasets make them (``function/dataset.py`` there).

* ``standard`` (the original's AugmentDataSet, VOC and ILSVRC): resize to a ``R×R`` *square* (R = 256 for the
  paper's 224 and 227 px), random crop S, horizontal flip.
* ``none`` (its SigmaDataSet, CUB): resize to ``S×S`` only — also the evaluation and the sigma stage's input.
* ``heavy`` (its SupplementDataSet): the square resize and crop, both flips, rotation ±30° and colour jitter
  ``ColorJitter(brightness=1, contrast=1, saturation=1, hue=0.5)``.

Every transform ends with ``ToTensor`` and ImageNet's mean/std normalisation.  ``--augment auto`` picks by the
dataset's kind (:data:`AUGMENT_BY_KIND`): CUB without augmentation, VOC and ILSVRC ``standard``, as the
original trained them; the embedded dataset ``standard``.
"""
from __future__ import annotations

from typing import Callable

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENT_BY_KIND = {"cub": "none", "voc": "standard", "ilsvrc": "standard", "embedded": "standard"}
DEFAULT_AUGMENT = "standard"  # a dataset of unknown kind


def normalize() -> T.Normalize:
    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)


def train_transform(size: int, resize: int) -> T.Compose:
    """Resize to ``resize×resize``, random crop ``size``, horizontal flip, normalise."""
    return T.Compose([T.Resize((resize, resize)), T.RandomCrop(size), T.RandomHorizontalFlip(),
                      T.ToTensor(), normalize()])


def heavy_train_transform(size: int, resize: int) -> T.Compose:
    """The supplement's heavy augmentation: square resize and random crop, both flips, rotation ±30°, strong
    colour jitter."""
    return T.Compose([
        T.Resize((resize, resize)), T.RandomCrop(size),
        T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.RandomRotation(30),
        T.ColorJitter(brightness=1, contrast=1, saturation=1, hue=0.5),
        T.ToTensor(), normalize(),
    ])


def eval_transform(size: int, resize: int | None = None) -> T.Compose:
    """Resize to exactly S×S, normalise (also the sigma stage's input; ``resize`` is not used)."""
    return T.Compose([T.Resize((size, size)), T.ToTensor(), normalize()])


TRAIN_TRANSFORMS: dict[str, Callable[[int, int], T.Compose]] = {
    "standard": train_transform, "heavy": heavy_train_transform, "none": eval_transform}


def resolve_augment(augment: str, kind: str | None) -> str:
    """``--augment``: ``auto`` becomes the original's choice for the dataset's kind."""
    if augment != "auto":
        return augment
    return AUGMENT_BY_KIND.get(kind or "", DEFAULT_AUGMENT)
