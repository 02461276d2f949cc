"""Training throughput with and without the weight-distance tracking, same run, same device.

    python bench/train_throughput.py [--arch vgg_tiny] [--device cpu] [--steps 30]

Prints samples/s of both and their ratio (goal: tracked / untracked cost ≤ 1.05).  The two variants are
interleaved in rounds so that machine noise hits both alike.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from kdq.function.cli import Parser, add_device_arg, positive_int, run
from kdq.function.runtime import resolve_device
from kdq.function.train.weight_distance import WeightDistance
from kdq.models import arch_info, build_model


def timed_steps(model, opt, tracker, images, labels, steps: int, device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    sync()
    tic = time.perf_counter()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if tracker is not None:
            tracker.step()
    sync()
    return time.perf_counter() - tic


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vgg_tiny", help="registry architecture to time")
    p.add_argument("--batch-size", type=positive_int, default=64, help="samples per optimizer step")
    p.add_argument("--steps", type=positive_int, default=20, help="optimizer steps per timed round")
    p.add_argument("--rounds", type=positive_int, default=5, help="rounds, each timing both variants")
    add_device_arg(p)
    return p


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    size = arch_info(args.arch).input_size
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    tracker = WeightDistance(model, {layer: tap.weight for layer, tap in arch_info(args.arch).taps.items()})
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    timed_steps(model, opt, tracker, images, labels, 3, device)  # warm-up
    plain = tracked = 0.0
    for _ in range(args.rounds):
        plain += timed_steps(model, opt, None, images, labels, args.steps, device)
        tracked += timed_steps(model, opt, tracker, images, labels, args.steps, device)
    n = args.rounds * args.steps * args.batch_size
    print(f"arch {args.arch}  device {device}  batch {args.batch_size}  {args.rounds}x{args.steps} steps each")
    print(f"without tracking: {n / plain:9.1f} samples/s")
    print(f"with tracking:    {n / tracked:9.1f} samples/s")
    print(f"time ratio tracked/untracked: {tracked / plain:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
