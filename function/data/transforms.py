"""Image transforms of SPEC §1, scaled to the input side S (the paper: S = 224, resize 256)."""
from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize() -> T.Normalize:
    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)


def train_transform(size: int) -> T.Compose:
    """Resize to round(S·256/224), random crop S, horizontal flip, normalise."""
    return T.Compose([T.Resize(round(size * 256 / 224)), T.RandomCrop(size), T.RandomHorizontalFlip(),
                      T.ToTensor(), normalize()])


def heavy_train_transform(size: int) -> T.Compose:
    """The supplement's heavy augmentation: random crop, both flips, rotation ±30°, strong colour jitter."""
    return T.Compose([
        T.Resize(round(size * 256 / 224)), T.RandomCrop(size),
        T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.RandomRotation(30),
        T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
        T.ToTensor(), normalize(),
    ])


def eval_transform(size: int) -> T.Compose:
    """Resize to exactly S×S, normalise (also the sigma stage's input)."""
    return T.Compose([T.Resize((size, size)), T.ToTensor(), normalize()])


TRAIN_TRANSFORMS = {"standard": train_transform, "heavy": heavy_train_transform, "none": eval_transform}
