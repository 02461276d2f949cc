"""Write the embedded dataset: seeded synthetic images with exact masks, in the docs/method.md §4 layout
(``--modality text`` or ``points``: token sequences or point clouds with their foreground).

    python -m kdq.function.stages.make_dataset --out data/embedded

Splits ``teacher`` (the teacher's large pool, its stand-in for pretraining), ``train`` (label net and
student) and ``val``; masks under ``seg/<split>/<class>/<stem>.png``.  Same seed, same bytes.
``--background-cue`` plants a class-coded mark in the background of the ``train`` split only (``teacher`` and
``val`` stay clean) and writes its pixels under ``cue/train/<class>/<stem>.png`` (``make validate``,
docs/validation.md).

``--modality text`` writes seeded sentences with their foreground (class-word) tokens instead
(``vocab.txt``, ``<split>.jsonl``; :mod:`kdq.function.data.text`), ``--modality points`` seeded point clouds
with their foreground points (``<split>/<class>/<stem>.npy``, flags under ``seg/``;
:mod:`kdq.function.data.points`); docs/data.md describes both layouts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kdq.function.cli import Parser, UserError, positive_int, run, seed
from kdq.function.data import points, text
from kdq.function.data.synthetic import SPLIT_IDS, max_classes, write_dataset
from kdq.function.io.rundir import check_out

CUE_SPLITS = ("train",)  # --background-cue: the label net's and the student's split; teacher and val stay clean
MODALITIES = ("image", "text", "points")
# the defaults that depend on --modality: classes and (teacher, train, val) items per class
DEFAULT_CLASSES = {"image": 8, "text": text.DEFAULT_CLASSES, "points": points.DEFAULT_CLASSES}
DEFAULT_PER_CLASS = {"image": (150, 20, 40), "text": tuple(text.DEFAULT_PER_CLASS[s] for s in SPLIT_IDS),
                     "points": tuple(points.DEFAULT_PER_CLASS[s] for s in SPLIT_IDS)}
MAX_CLASSES = {"image": max_classes(), "text": text.max_classes(), "points": points.max_classes()}
# the flags of one modality only, with their defaults (given for another modality: a one-line error)
MODALITY_FLAGS = {"image_size": ("image", 64), "background_cue": ("image", False),
                  "min_length": ("text", text.DEFAULT_MIN_LENGTH), "max_length": ("text", text.DEFAULT_MAX_LENGTH),
                  "class_words": ("text", text.DEFAULT_CLASS_WORDS), "points": ("points", points.DEFAULT_POINTS)}
ITEMS = {"image": "images", "text": "sentences", "points": "clouds"}


def _default(flag: str):
    return MODALITY_FLAGS[flag][1]


def _per_class_help(split: str) -> str:
    shown = ", ".join(f"{n[i]} {ITEMS[m]}" for m, n in DEFAULT_PER_CLASS.items()
                      for i in [list(SPLIT_IDS).index(split)])
    return f"items per class in the {split} split (default: {shown})"


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="dataset root to create")
    p.add_argument("--modality", choices=MODALITIES, default="image",
                   help="what to generate: images with masks, token sequences (text) with foreground tokens, or "
                        "point clouds with foreground points (docs/data.md)")
    p.add_argument("--seed", type=seed, default=0, help="generator seed")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes (default: " + ", ".join(f"{DEFAULT_CLASSES[m]} for {m} (2..{MAX_CLASSES[m]})"
                                                          for m in MODALITIES) + ")")
    for split in SPLIT_IDS:
        p.add_argument(f"--{split}-per-class", type=positive_int, default=None, help=_per_class_help(split))
    image = p.add_argument_group("--modality image")
    image.add_argument("--image-size", type=positive_int, default=None,
                       help=f"image side in pixels (default: {_default('image_size')})")
    image.add_argument("--background-cue", action="store_true", default=None,
                       help="plant a class-coded mark (a framed colour patch whose hue encodes the class) on the "
                            "background of the train split only, its pixels under cue/train/<class>/<stem>.png "
                            "(a known shortcut for make validate; the teacher and val splits stay clean)")
    words = p.add_argument_group("--modality text")
    words.add_argument("--min-length", type=positive_int, default=None,
                       help=f"fewest tokens in a sentence (default: {_default('min_length')})")
    words.add_argument("--max-length", type=positive_int, default=None,
                       help="most tokens in a sentence, also the padded length L of dataset.json's max_length "
                            f"(default: {_default('max_length')})")
    words.add_argument("--class-words", type=positive_int, default=None,
                       help=f"class words per class, 1..{text.max_class_words()} (a sentence holds 1 to 3 of its "
                            f"class's; default: {_default('class_words')})")
    clouds = p.add_argument_group("--modality points")
    clouds.add_argument("--points", type=positive_int, default=None,
                        help=f"points per cloud, at least {points.MIN_POINTS} (default: {_default('points')})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it is plain lines anyway when stderr is not a terminal)")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the defaults of its ``--modality`` filled in; a flag of another modality is a UserError."""
    m = args.modality
    given = sorted(f"--{k.replace('_', '-')}" for k, (owner, _) in MODALITY_FLAGS.items()
                   if owner != m and getattr(args, k) is not None)
    if given:
        raise UserError(f"{', '.join(given)}: not an option of --modality {m}")
    values = {k: default if getattr(args, k) is None else getattr(args, k)
              for k, (_, default) in MODALITY_FLAGS.items()}
    per_class = [default if value is None else value for value, default in
                 zip((args.teacher_per_class, args.train_per_class, args.val_per_class), DEFAULT_PER_CLASS[m])]
    num_classes = DEFAULT_CLASSES[m] if args.num_classes is None else args.num_classes
    return argparse.Namespace(**{**vars(args), **values, "num_classes": num_classes, "teacher_per_class": per_class[0],
                                 "train_per_class": per_class[1], "val_per_class": per_class[2]})


def check(args: argparse.Namespace) -> None:
    """The ranges that depend on the modality, as one-line errors under their flags."""
    if not 2 <= args.num_classes <= MAX_CLASSES[args.modality]:
        raise UserError(f"--num-classes must be in 2..{MAX_CLASSES[args.modality]} for --modality {args.modality}, "
                        f"got {args.num_classes}")
    if args.modality == "text":
        if args.max_length < args.min_length:
            raise UserError(f"--max-length must be at least --min-length ({args.min_length}), got {args.max_length}")
        if args.class_words > text.max_class_words():
            raise UserError(f"--class-words must be in 1..{text.max_class_words()}, got {args.class_words}")
    if args.modality == "points" and args.points < points.MIN_POINTS:
        raise UserError(f"--points must be at least {points.MIN_POINTS}, got {args.points}")


def main(args: argparse.Namespace) -> None:
    args = resolve(args)
    check(args)
    check_out(args.out, "make_dataset", overwrite=args.overwrite, resumable=False)
    per_class = {"teacher": args.teacher_per_class, "train": args.train_per_class, "val": args.val_per_class}
    assert list(per_class) == list(SPLIT_IDS)
    if args.modality == "text":
        text.write_text_dataset(args.out, args.seed, args.num_classes, per_class, args.min_length, args.max_length,
                                args.class_words, args.progress)
        print(f"wrote {args.out}: text, {args.num_classes} classes, {per_class} sentences per class, "
              f"{args.min_length}..{args.max_length} tokens")
        return
    if args.modality == "points":
        points.write_point_dataset(args.out, args.seed, args.num_classes, per_class, args.points, args.progress)
        print(f"wrote {args.out}: points, {args.num_classes} classes, {per_class} clouds per class, "
              f"{args.points} points")
        return
    write_dataset(args.out, args.seed, args.image_size, args.num_classes, per_class, args.progress,
                  cue_splits=CUE_SPLITS if args.background_cue else ())
    print(f"wrote {args.out}: {args.num_classes} classes, {per_class} images per class, "
          f"{args.image_size}px")


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
