"""σ-fit throughput (image·checkpoints/s) of train_sigma at several world sizes under torchrun (gloo on the CPU).

    python bench/sigma_scaling.py [--arch vgg_tiny --layer conv] [--world-sizes 1 2] [--threads 2]

Writes a small embedded dataset and a checkpoint run of ``--checkpoints`` freshly initialised nets (seeds
0, 1, ...: the cost of a fit does not depend on training), then runs the real stage,
``python -m torch.distributed.run --standalone --nproc_per_node W sigma/train_sigma.py ...``, for every
launch of the thread plan (``bench/scaling.py``: W ranks × T/W threads and 1 rank × T/W threads,
OMP_NUM_THREADS set per launch), alternated over ``--repeats``.  ``--effective-rule off`` and
``--effect-num = --pic-num``: every drawn image is fitted at every checkpoint, so each run does the same
``pic-num × checkpoints`` fits whatever W.

How time is measured: train_sigma records in ``run.json`` the number of fits (summed over ranks) and
``loop_wall_s``, rank 0's wall time of the fitting loop, from its first round of images to the all-reduce
after the last (so every rank has finished).  Interpreter start, imports, torchrun's rendezvous, loading the
checkpoints and listing the dataset are not in it; each rank's first fits (allocator, oneDNN primitives and,
with ``--compile``, the compilation) are.  A run's rate is fits / loop_wall_s.  Prints each launch's median
over the repeats, the speed-up and parallel efficiency over 1 rank with the same threads, and the ratio to
1 rank with all the threads (the same cores).  Keep ``--pic-num`` a multiple of ``--batch-images`` × W, or
the last round leaves ranks idle.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from kdq.function.io.checkpoint import save_checkpoint
from kdq.function.cli import Parser, UserError, positive_float, positive_int, run
from kdq.function.data.synthetic import write_dataset
from scaling import Launch, add_scaling_args, compare_launches, plan_launches, torchrun, work_dir
from kdq.function.archs import arch_or_error
from kdq.models import LAYERS, MODELS, build_model

SCRIPT = "sigma/train_sigma.py"


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    n = p.add_argument_group("the net")
    n.add_argument("--arch", default="vgg_tiny", help=f"architecture: {', '.join(MODELS)}")
    n.add_argument("--layer", default="conv", choices=LAYERS, help="layer whose σ is fitted")
    n.add_argument("--checkpoints", type=positive_int, default=3, help="checkpoints in the generated run")
    n.add_argument("--num-classes", type=positive_int, default=4, help="classes of the net and the dataset")
    f = p.add_argument_group("the sigma run (train_sigma flags; defaults: the demo's, Makefile SIGMA_FLAGS)")
    f.add_argument("--pic-num", type=positive_int, default=8, help="images fitted per run")
    f.add_argument("--batch-images", type=positive_int, default=2, help="images fitted at once per rank")
    f.add_argument("--samples", type=positive_int, default=16, help="noise samples per step")
    f.add_argument("--steps", type=positive_int, default=20, help="SGD steps T")
    f.add_argument("--break-steps", type=int, default=5, help="T_break")
    f.add_argument("--lr", type=positive_float, default=4e-4, help="SGD learning rate on σ")
    f.add_argument("--grid", type=positive_int, default=8, help="σ grid (must divide the input size)")
    f.add_argument("--compile", action="store_true",
                   help="train_sigma --compile (its compile time falls inside the timed loop)")
    d = p.add_argument_group("the generated dataset")
    d.add_argument("--image-size", type=positive_int, default=64, help="side of the generated images in pixels")
    add_scaling_args(p)
    return p


def write_checkpoint_run(run_dir: Path, arch: str, num_classes: int, count: int) -> None:
    """``<run>/<e>.pth.tar`` for e = 0 .. count-1: fresh nets, seed e (the docs/method.md §4 training-run layout)."""
    for epoch in range(count):
        torch.manual_seed(epoch)
        model = build_model(arch, num_classes)
        save_checkpoint(run_dir / f"{epoch}.pth.tar",
                        {"epoch": epoch, "state_dict": model.state_dict(), "best_acc1": 0.0, "optimizer": {}})


def main(args: argparse.Namespace) -> None:
    arch_or_error(args.arch)
    launches = plan_launches(args.world_sizes, args.threads)
    expected = args.pic_num * args.checkpoints
    with work_dir(args.out) as work:
        data, ckpts = work / "data", work / "checkpoints"
        if not (data / "dataset.json").is_file():
            write_dataset(data, seed=0, size=args.image_size, num_classes=args.num_classes,
                          per_class={"train": math.ceil(args.pic_num / args.num_classes)})
        if not (ckpts / f"{args.checkpoints - 1}.pth.tar").is_file():
            write_checkpoint_run(ckpts, args.arch, args.num_classes, args.checkpoints)

        def run_one(launch: Launch, repeat: int) -> float:
            out = work / f"sigma_{launch.tag}_r{repeat}"
            torchrun(SCRIPT, ["--checkpoint_root", ckpts, "--arch", args.arch, "--layer", args.layer,
                              "--data", data, "--split", "train", "--out", out, "--overwrite",
                              "--checkpoints", *range(args.checkpoints),
                              "--pic-num", args.pic_num, "--effect-num", args.pic_num, "--effective-rule", "off",
                              "--batch-images", args.batch_images, "--samples", args.samples, "--steps", args.steps,
                              "--break-steps", args.break_steps, "--lr", args.lr, "--grid", args.grid,
                              "--device", args.device, "--no-progress", *(["--compile"] if args.compile else [])],
                     launch, args.timeout)
            record = json.loads((out / "run.json").read_text())
            if record["fits_this_session"] != expected:
                raise UserError(f"{out}: {record['fits_this_session']} fits, expected {expected}")
            return record["fits_this_session"] / record["loop_wall_s"]

        compare_launches(launches, args.repeats, run_one, "image-checkpoints/s",
                f"train_sigma {args.arch} {args.layer}: {args.pic_num} images x {args.checkpoints} checkpoints = "
                f"{expected} fits per run (n={args.samples}, T={args.steps}, grid {args.grid}, batch "
                f"{args.batch_images}{', --compile' if args.compile else ''}), --device {args.device}")

if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
