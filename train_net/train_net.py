"""Stage 1: train a teacher or a label net and record checkpoints plus per-layer weight distances.

    python train_net/train_net.py --arch vgg_tiny --data data/embedded --split train --epochs 30 --out runs/label

Writes ``<out>/<e>.pth.tar`` for every scheduled epoch (0 = initialisation), ``weight_diff.npy``
(4, epochs+1), ``train_log.{json,csv}``, ``run.json``; ``train_state.pth.tar`` lets ``--resume``
continue an interrupted run exactly.  Runs under ``torchrun`` unchanged (DDP, rank 0 writes).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

from function.cli import Parser, UserError, finite_float, positive_int, run
from function.engine import EpochLoop, evaluate, log_spaced_lr
from function.runtime import cleanup_distributed
from function.schedule import resolve_checkpoints
from function.stage import add_common_training_args, add_sgd_args, arch_or_error, load_splits, make_loaders, setup
from function.weight_distance import WeightDistance
from models import MODELS, build_model

log = logging.getLogger("kdq")


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    m = p.add_argument_group("model")
    m.add_argument("--arch", required=True, help=f"architecture: {', '.join(MODELS)}")
    m.add_argument("--pretrained", type=Path, default=None,
                   help="local torchvision-format state dict for the backbone (never downloaded)")
    m.add_argument("--dropout", type=finite_float, default=None, help="dropout of the fc head (default: the arch's 0.5)")
    o = p.add_argument_group("optimisation (SPEC §1 defaults)")
    o.add_argument("--epochs", type=positive_int, default=150, help="training epochs")
    add_sgd_args(o)
    add_common_training_args(p)
    return p


def main(args: argparse.Namespace) -> None:
    info = arch_or_error(args.arch)
    try:
        checkpoints = resolve_checkpoints(args.checkpoints, args.epochs)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    train_set, val_set = load_splits(args, info.input_size)
    ctx, device, record = setup(args, "train_net")
    if record is None:
        return
    try:
        model = build_model(args.arch, len(train_set.classes), args.pretrained, args.dropout)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"--pretrained: {exc}") from None
    model.to(device)
    net = nn.parallel.DistributedDataParallel(model) if ctx.enabled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    loader, val_loader = make_loaders(args, train_set, val_set, info.input_size, ctx, device)

    def step(images, labels):
        logits = net(images)
        return nn.functional.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()

    loop = EpochLoop(out=args.out, model=model, optimizer=optimizer, step_fn=step, loader=loader,
                     device=device, ctx=ctx, seed=args.seed, epochs=args.epochs, arch=args.arch,
                     checkpoints=set(checkpoints), tracker=WeightDistance(model, args.arch, args.epochs),
                     lr_at=log_spaced_lr(args.lr, args.epochs),
                     validate=(lambda: evaluate(model, val_loader, device)) if val_loader else None,
                     meta={"classes": train_set.classes, "num_classes": len(train_set.classes)})
    if args.resume:
        loop.try_resume()
    record.update(checkpoints=checkpoints, classes=train_set.classes)
    if ctx.is_main:
        record.save("running")
    history = loop.run()
    if ctx.is_main:
        final = history[-1] if history else {}
        record.update(final=final, best_acc1=loop.best_acc1)
        record.save("complete")
        log.info("done: %s (val top-1 %.2f%%, best %.2f%%)", args.out, final.get("val_acc1", float("nan")),
                 loop.best_acc1)
    cleanup_distributed()


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
