"""Write the embedded dataset: seeded synthetic images with exact masks, in the SPEC §4 layout.

    python function/make_dataset.py --out data/embedded

Splits ``teacher`` (the teacher's large pool, its stand-in for pretraining), ``train`` (label net and
student) and ``val``; masks under ``seg/<split>/<class>/<stem>.png``.  Same seed, same bytes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from function.atomic import atomic_dir, write_json
from function.cli import Parser, UserError, positive_int, run
from function.synthetic import SPLIT_IDS, Style, class_names, image_rng, max_classes, render


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="dataset root to create")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--image-size", type=positive_int, default=64, help="image side in pixels")
    p.add_argument("--num-classes", type=positive_int, default=8, help=f"classes (2..{max_classes()})")
    p.add_argument("--teacher-per-class", type=positive_int, default=150, help="images per class, teacher split")
    p.add_argument("--train-per-class", type=positive_int, default=20, help="images per class, train split")
    p.add_argument("--val-per-class", type=positive_int, default=40, help="images per class, val split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    return p


def write_dataset(out: Path, seed: int, size: int, num_classes: int, per_class: dict[str, int]) -> None:
    """Generate into a temporary sibling folder, then move it into place (never half-written)."""
    names = class_names(num_classes)
    with atomic_dir(out) as tmp:
        total = sum(per_class.values()) * num_classes
        with tqdm(total=total, desc="images", dynamic_ncols=True) as bar:
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
        write_json(tmp / "dataset.json", {"generator": "kdq.synthetic", "seed": seed, "image_size": size,
                                          "classes": names, "per_class": per_class, "style": Style().__dict__})

def main(args: argparse.Namespace) -> None:
    if not 2 <= args.num_classes <= max_classes():
        raise UserError(f"--num-classes must be in 2..{max_classes()}, got {args.num_classes}")
    if args.out.exists() and not args.overwrite:
        if (args.out / "dataset.json").is_file():
            raise UserError(f"--out: {args.out} already holds a dataset; pass --overwrite to regenerate it")
        raise UserError(f"--out: {args.out} already exists")
    per_class = {"teacher": args.teacher_per_class, "train": args.train_per_class, "val": args.val_per_class}
    assert set(per_class) == set(SPLIT_IDS)
    write_dataset(args.out, args.seed, args.image_size, args.num_classes, per_class)
    print(f"wrote {args.out}: {args.num_classes} classes, {per_class} images per class, "
          f"{args.image_size}px")


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
