"""Training throughput (samples/s) of train_net at several world sizes under torchrun (DDP, gloo on the CPU).

    python bench/train_scaling.py [--arch vgg_tiny] [--world-sizes 1 2] [--threads 2] [--epochs 4]

Writes a small embedded dataset (``--num-classes`` × ``--images-per-class`` training images), then runs the
real stage, ``python -m torch.distributed.run --standalone --nproc_per_node W train_net/train_net.py ...``,
for every launch of the thread plan (``bench/scaling.py``: W ranks × T/W threads and 1 rank × T/W
threads, OMP_NUM_THREADS set per launch), alternated over ``--repeats``.  ``--batch-size`` is the global
batch, as in train_net (each rank takes batch/W).

How time is measured: train_net records ``train_time_s`` per epoch in ``train_log.json`` (the training
pass: data loading and augmentation, forward, backward, step, weight-distance tracking and the end-of-epoch
all-reduce; not validation, which is off, nor checkpoint writing).  Epoch 1 is a warm-up (allocator, oneDNN
primitives, DDP buckets) and is left out: a run's rate is samples per epoch (the DistributedSampler's,
padded to a multiple of W) × (epochs − 1) / the summed time of epochs 2..E.  Interpreter start, imports,
torchrun's rendezvous and the dataset listing are never counted.  Prints each launch's median over the
repeats, the speed-up and parallel efficiency over 1 rank with the same threads, and the ratio to 1 rank
with all the threads (the same cores).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from kdq.function.cli import Parser, UserError, positive_int, run
from kdq.function.data.synthetic import write_dataset
from scaling import Launch, add_scaling_args, compare_launches, plan_launches, torchrun, work_dir
from kdq.function.archs import arch_or_error
from kdq.models import MODELS

SCRIPT = "train_net/train_net.py"


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    w = p.add_argument_group("the training run")
    w.add_argument("--arch", default="vgg_tiny", help=f"architecture: {', '.join(MODELS)}")
    w.add_argument("--epochs", type=positive_int, default=4, help="epochs per run (≥ 2: epoch 1 is a warm-up)")
    w.add_argument("--batch-size", type=positive_int, default=32,
                   help="global batch (over all ranks); must divide by every world size")
    w.add_argument("--lr", type=float, default=0.01, help="train_net --lr")
    w.add_argument("--workers", type=int, default=0, help="train_net --workers (DataLoader processes per rank)")
    d = p.add_argument_group("the generated dataset")
    d.add_argument("--num-classes", type=positive_int, default=4, help="classes")
    d.add_argument("--images-per-class", type=positive_int, default=32, help="training images per class")
    d.add_argument("--image-size", type=positive_int, default=64, help="side of the generated images in pixels")
    add_scaling_args(p)
    return p


def check(args: argparse.Namespace) -> None:
    if args.epochs < 2:
        raise UserError("--epochs must be at least 2 (epoch 1 is a warm-up and is not timed)")
    arch_or_error(args.arch)
    bad = [w for w in args.world_sizes if args.batch_size % w]
    if bad:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by world size(s) {bad}")


def samples_per_epoch(images: int, world_size: int) -> int:
    """What the DistributedSampler hands out in one epoch over all ranks (padded to a multiple of W)."""
    return math.ceil(images / world_size) * world_size


def steady_rate(run_dir: Path, images: int, world_size: int) -> float:
    """Samples/s over epochs 2..E of a finished run, from its ``train_log.json``."""
    rows = json.loads((run_dir / "train_log.json").read_text())
    seconds = sum(row["train_time_s"] for row in rows[1:])
    return samples_per_epoch(images, world_size) * (len(rows) - 1) / seconds


def main(args: argparse.Namespace) -> None:
    check(args)
    launches = plan_launches(args.world_sizes, args.threads)
    images = args.num_classes * args.images_per_class
    with work_dir(args.out) as work:
        data = work / "data"
        if not (data / "dataset.json").is_file():
            write_dataset(data, seed=0, size=args.image_size, num_classes=args.num_classes,
                          per_class={"train": args.images_per_class})

        def run_one(launch: Launch, repeat: int) -> float:
            out = work / f"run_{launch.tag}_r{repeat}"
            torchrun(SCRIPT, ["--arch", args.arch, "--data", data, "--split", "train", "--val-split", "none",
                              "--epochs", args.epochs, "--batch-size", args.batch_size, "--lr", args.lr,
                              "--workers", args.workers, "--checkpoints", args.epochs, "--device", args.device,
                              "--seed", 0, "--out", out, "--overwrite"], launch, args.timeout)
            return steady_rate(out, images, launch.world_size)

        compare_launches(launches, args.repeats, run_one, "samples/s",
                f"train_net {args.arch}: {images} training images of {args.image_size} px, global batch "
                f"{args.batch_size}, {args.epochs} epochs (timed: 2..{args.epochs}), --device {args.device}")

if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
