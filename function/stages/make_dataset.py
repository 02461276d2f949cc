"""Write the embedded dataset: seeded synthetic images with exact masks, in the docs/method.md §4 layout.

    python -m kdq.function.stages.make_dataset --out data/embedded

Splits ``teacher`` (the teacher's large pool, its stand-in for pretraining), ``train`` (label net and
student) and ``val``; masks under ``seg/<split>/<class>/<stem>.png``.  Same seed, same bytes.
``--background-cue`` plants a class-coded mark in the background of the ``train`` split only (``teacher`` and
``val`` stay clean) and writes its pixels under ``cue/train/<class>/<stem>.png`` (``make validate``,
docs/validation.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kdq.function.cli import Parser, UserError, positive_int, run, seed
from kdq.function.data.synthetic import SPLIT_IDS, max_classes, write_dataset
from kdq.function.io.rundir import check_out

CUE_SPLITS = ("train",)  # --background-cue: the label net's and the student's split; teacher and val stay clean


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="dataset root to create")
    p.add_argument("--seed", type=seed, default=0, help="generator seed")
    p.add_argument("--image-size", type=positive_int, default=64, help="image side in pixels")
    p.add_argument("--num-classes", type=positive_int, default=8, help=f"classes (2..{max_classes()})")
    p.add_argument("--teacher-per-class", type=positive_int, default=150, help="images per class, teacher split")
    p.add_argument("--train-per-class", type=positive_int, default=20, help="images per class, train split")
    p.add_argument("--val-per-class", type=positive_int, default=40, help="images per class, val split")
    p.add_argument("--background-cue", action="store_true",
                   help="plant a class-coded mark (a framed colour patch whose hue encodes the class) on the "
                        "background of the train split only, its pixels under cue/train/<class>/<stem>.png "
                        "(a known shortcut for make validate; the teacher and val splits stay clean)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it is plain lines anyway when stderr is not a terminal)")
    return p


def main(args: argparse.Namespace) -> None:
    if not 2 <= args.num_classes <= max_classes():
        raise UserError(f"--num-classes must be in 2..{max_classes()}, got {args.num_classes}")
    check_out(args.out, "make_dataset", overwrite=args.overwrite, resumable=False)
    per_class = {"teacher": args.teacher_per_class, "train": args.train_per_class, "val": args.val_per_class}
    assert set(per_class) == set(SPLIT_IDS)
    write_dataset(args.out, args.seed, args.image_size, args.num_classes, per_class, args.progress,
                  cue_splits=CUE_SPLITS if args.background_cue else ())
    print(f"wrote {args.out}: {args.num_classes} classes, {per_class} images per class, "
          f"{args.image_size}px")


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
