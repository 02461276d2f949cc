"""Stage 1: train a teacher or a label net and record checkpoints plus per-layer weight distances.

    python train_net/train_net.py --arch vgg_tiny --data data/embedded --split train --epochs 30 --out runs/label

Writes ``<out>/<e>.pth.tar`` for every scheduled epoch (0 = initialisation), ``weight_diff.npy``
(4, epochs+1), ``train_log.{json,csv}``, ``run.json``; ``train_state.pth.tar`` lets ``--resume``
continue an interrupted run exactly.  Runs under ``torchrun`` unchanged (DDP, rank 0 writes).
The method and its defaults: docs/method.md.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kdq.function.archs import add_arch_args
from kdq.function.cli import Parser, UserError, epoch_count, in_range, run
from kdq.function.train.options import add_common_training_args, add_sgd_args

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    m = p.add_argument_group("model")
    add_arch_args(m)
    m.add_argument("--pretrained", type=Path, default=None,
                   help="local torchvision-format state dict for the backbone (never downloaded); the head starts "
                        "fresh (VGG/AlexNet: fc1, fc2 and fc3; ResNets: the extra block and the head; other models: "
                        "the fc3 tap's module), as the original code")
    m.add_argument("--keep-pretrained-head", action="store_true",
                   help="with --pretrained, take fc1 and fc2 from the file too (only fc3 starts fresh)")
    m.add_argument("--dropout", type=in_range(0, 1, hi_included=False), default=None,
                   help="dropout of the fc head of registry architectures (default: the arch's 0.5)")
    o = p.add_argument_group("optimisation (docs/method.md §1 defaults)")
    o.add_argument("--epochs", type=epoch_count, default=150, help="training epochs")
    add_sgd_args(o, schedule="logspace", lr=1e-3,
                 lr_help="; the original's default, whose notes suggest 1e-2 for VGG and 1e-1 for ResNets from "
                         "scratch, 1e-3 and 1e-2 fine-tuning pretrained ones (each log-spaced down one decade)")
    add_common_training_args(p)
    return p


def read_pretrained(args: argparse.Namespace, info, num_classes: int) -> dict | None:
    """The ``--pretrained`` state dict, checked against the architecture before anything is written."""
    import torch

    from kdq.function.io.checkpoint import check_numeric, load_checkpoint
    from kdq.models import check_pretrained

    if args.pretrained is None:
        if args.keep_pretrained_head:
            raise UserError("--keep-pretrained-head needs --pretrained")
        return None
    state = load_checkpoint(args.pretrained, "--pretrained")
    weights = state.get("state_dict", state)
    if isinstance(weights, dict):
        check_numeric({k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}, f"--pretrained: {args.pretrained}")
    try:
        check_pretrained(info, num_classes, state, str(args.pretrained), args.dropout, args.keep_pretrained_head)
    except ValueError as exc:
        raise UserError(f"--pretrained: {exc}") from None
    return state


def main(args: argparse.Namespace) -> None:
    import torch
    from torch import nn

    from kdq.function.archs import check_input_size, model_record, resolve_arch
    from kdq.function.runtime import cleanup_distributed, startup_step
    from kdq.function.train.engine import EpochLoop, evaluate
    from kdq.function.train.schedules import parse_epochs
    from kdq.function.train.stage import (check_dropout, check_splits, checked_lr_schedule, load_splits, make_loaders,
                                          resolved_augment, setup)
    from kdq.function.train.weight_distance import WeightDistance

    info = resolve_arch(args.arch, args.taps, args.image_size)
    try:
        checkpoints = parse_epochs(args.checkpoints, args.epochs)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    train_set, val_set = load_splits(args, info.input_size)
    check_dropout(args.dropout, info)
    check_input_size(info, len(train_set.classes))
    pretrained = read_pretrained(args, info, len(train_set.classes))
    lr_at = checked_lr_schedule(args)
    check_splits(args, train_set, val_set)
    ctx, device, record = setup(args, "train_net", {"augment": resolved_augment(args)})
    if record is None:
        return
    with startup_step("building the model"):
        model = info.build(len(train_set.classes), pretrained, args.dropout, args.keep_pretrained_head)
        model.to(device)
        net = nn.parallel.DistributedDataParallel(model) if ctx.enabled else model
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay)
    with startup_step("building the data loaders"):
        loader, val_loader = make_loaders(args, train_set, val_set, info, ctx, device)

    def step(images, labels):
        logits = net(images)
        return nn.functional.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()

    loop = EpochLoop(out=args.out, model=model, optimizer=optimizer, step_fn=step, loader=loader,
                     device=device, ctx=ctx, seed=args.seed, epochs=args.epochs, arch=info.name,
                     checkpoints=set(checkpoints),
                     tracker=WeightDistance(model, {layer: tap.weight for layer, tap in info.taps.items()}),
                     lr_at=lr_at,
                     validate=(lambda: evaluate(model, val_loader, device)) if val_loader else None,
                     meta={"classes": train_set.classes, "num_classes": len(train_set.classes)},
                     save_optimizer=args.save_optimizer, progress=args.progress, tensorboard=args.tensorboard)
    if args.resume:
        loop.try_resume()
    record.update(checkpoints=checkpoints, classes=train_set.classes, model=model_record(info))
    with record.running(ctx.is_main):
        history = loop.run()
    if ctx.is_main:
        final = history[-1] if history else {}
        record.update(final=final, best_acc1=loop.best_acc1)
        record.save("complete")
        log.info("done: %s (val top-1 %.2f%%, best %.2f%%)", args.out, final.get("val_acc1", float("nan")),
                 loop.best_acc1)
    cleanup_distributed()


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
