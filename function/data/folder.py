"""The folder dataset of docs/method.md §4: ``<root>/<split>/<class>/<image>`` with masks at
``<root>/seg/<split>/<class>/<stem>.png`` (a mask pixel > 0 is foreground)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from kdq.function.cli import UserError
from kdq.function.data.files import UnreadableFile, check_names, image_header, read_image, read_mask
from kdq.function.data.layout import IMAGE_EXTENSIONS
from kdq.function.progress import progress
from kdq.function.runtime import derive_seed

class MaskedImageFolder(Dataset):
    """Images of one split; ``dataset[i]`` → (image tensor, label); ``mask(i)`` → bool (H, W) or None.

    ``names[i]`` is the image path relative to the split root (e.g. ``003.Sooty/img_1.jpg``), the
    form used by the sigma stage's name lists.  ``require_masks`` makes a missing mask a UserError.
    ``classes``: another split's class list (validation reads the training split's); a class folder holding images
    outside it is a UserError naming it.
    """

    def __init__(self, root: Path, split: str, transform: Callable | None = None,
                 require_masks: bool = False, classes: list[str] | None = None, split_flag: str = "--split"):
        self.root, self.split, self.transform = Path(root), split, transform
        if not self.root.is_dir():
            raise UserError(f"--data: dataset root {self.root} does not exist or is not a directory")
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name != "seg")
            hint = " or --val-split none to train without validation" if split_flag == "--val-split" else ""
            raise UserError(f"{split_flag}: {self.split_dir} not found (splits here: {', '.join(found) or 'none'}; "
                            f"pass one of them{hint})")
        self.classes = classes if classes is not None else sorted(
            p.name for p in self.split_dir.iterdir() if p.is_dir())
        if not self.classes:
            raise UserError(f"--data: {self.split_dir} has no class folders")
        if classes is not None:
            check_no_other_classes(self.split_dir, classes, split_flag)
        self.samples: list[tuple[str, int]] = []
        for label, cls in enumerate(self.classes):
            folder = self.split_dir / cls
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) \
                if folder.is_dir() else []
            if not files:
                raise UserError(f"--data: class folder {folder} has no images")
            self.samples += [(f"{cls}/{p.name}", label) for p in files]
        self.names = [name for name, _ in self.samples]
        check_names(self.names, str(self.split_dir))
        self.targets = [label for _, label in self.samples]
        self._index = {n: i for i, n in enumerate(self.names)}
        if require_masks:
            self.check_masks()

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, i: int) -> Path:
        return self.split_dir / self.samples[i][0]

    def mask_path(self, i: int) -> Path:
        return self.root / "seg" / self.split / Path(self.samples[i][0]).with_suffix(".png")

    def load_image(self, i: int) -> Image.Image:
        return read_image(self.image_path(i))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.load_image(i)
        return (self.transform(img) if self.transform else img), self.samples[i][1]

    def mask_values(self, i: int, image_size: tuple[int, int] | None = None) -> np.ndarray | None:
        """The mask of image ``i`` as grey values (uint8 (H, W); > 0 is foreground), None without a mask file;
        ``image_size`` (w, h), when the caller has the image open, saves reading its header again."""
        path = self.mask_path(i)
        if not path.is_file():
            return None
        return read_mask(path, image_size or image_header(self.image_path(i))[1])

    def mask(self, i: int) -> np.ndarray | None:
        """The mask of image ``i`` as a bool (H, W) array (value > 0), None without a mask file."""
        values = self.mask_values(i)
        return None if values is None else values > 0

    def check_masks(self) -> None:
        missing = [self.names[i] for i in range(len(self)) if not self.mask_path(i).is_file()]
        if missing:
            raise UserError(f"--data: {len(missing)} image(s) of split {self.split!r} have no mask under "
                            f"{self.root / 'seg' / self.split} (first: {missing[0]})")

    def check_files(self, indices: Iterable[int] | None = None, masks: bool = False, workers: int = 4,
                    show_progress: bool = False) -> None:
        """Decode every image of ``indices`` (default: all) and, with ``masks``, its mask (where there is one),
        before a stage writes anything: a UserError lists the files that cannot be used."""
        indices = list(range(len(self)) if indices is None else indices)

        def problem(i: int) -> str | None:
            try:
                image = read_image(self.image_path(i))
                if masks:
                    self.mask_values(i, image.size)
            except UnreadableFile as exc:
                return str(exc)
            return None

        pool = ThreadPoolExecutor(max(1, workers))  # decoding releases the GIL
        try:
            found = [p for p in progress(pool.map(problem, indices), total=len(indices), leave=False,
                                         desc=f"checking {self.split} images", enabled=show_progress) if p]
        finally:  # on Ctrl-C, the images not yet decoded are dropped instead of waited for
            pool.shutdown(wait=True, cancel_futures=True)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise UserError(f"--data: {len(found)} file(s) of split {self.split!r} cannot be used: {found[0]}{more}")

    def index_of(self, name: str) -> int:
        if name not in self._index:
            raise UserError(f"--data: image {name!r} is not in split {self.split!r} of {self.root}")
        return self._index[name]


def check_no_other_classes(split_dir: Path, classes: list[str], flag: str) -> None:
    """A split read with another split's ``classes`` (validation with the training split's) must not hold images of
    a class outside them: the net has no output for it, and its images would be left out without a word."""
    other = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes
                   and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in p.iterdir()))
    if other:
        raise UserError(f"{flag}: {split_dir} holds class folder(s) that the training split lacks: "
                        f"{', '.join(other)} (the net has no output for them); move them away or add them to the "
                        "training split")


class SeededTransform(Dataset):
    """Apply a random transform with a torch RNG seeded by (seed, epoch, index).

    The augmentation of a sample then depends neither on the DataLoader's workers nor on the rank
    that loads it, so a run is reproducible and resumable, and 1 or N processes see the same data.
    """

    def __init__(self, base: MaskedImageFolder, transform: Callable, seed: int):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.epoch, i))
            return self.transform(img), label
