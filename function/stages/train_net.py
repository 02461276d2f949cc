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

from kdq.function.cli import UserError, run
from kdq.function.config import build_parser
from kdq.function.train.config import TrainConfig

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    """The stage's flags: one per field of :class:`~kdq.function.train.config.TrainConfig` (parse_args returns it)."""
    return build_parser(TrainConfig, __doc__.split("\n\n")[0])


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
    """Train one net on labels (its single phase), after every check that needs no output folder."""
    from kdq.function.archs import check_input_size, model_record, resolve_arch
    from kdq.function.runtime import cleanup_distributed, startup_step, use_threads
    from kdq.function.train.phase import Phase, accuracy_validation, cross_entropy_step, finish_phase, start_phase, \
        tracked_weights
    from kdq.function.train.stage import (check_dropout, check_splits, checked_checkpoints, checked_lr_schedule,
                                          data_identity, make_loaders, resolved_augment, setup, study_data)

    args = use_threads(args)  # torch's CPU threads (--threads), the count recorded in run.json
    info = resolve_arch(args.arch, args.taps, args.image_size)
    checkpoints = checked_checkpoints(args)
    modality, info, train_set, val_set = study_data(args, info)
    check_dropout(args.dropout, info)
    check_input_size(info, len(train_set.classes))
    pretrained = read_pretrained(args, info, len(train_set.classes))
    lr_at = checked_lr_schedule(args)
    check_splits(args, train_set, val_set)
    run = setup(args, "train_net", {"augment": resolved_augment(args), "modality": modality,
                                    **data_identity(train_set)})
    if run.complete:
        return
    run.seed()
    with startup_step("building the model"):
        model = info.build(len(train_set.classes), pretrained, args.dropout, args.keep_pretrained_head)
        model.to(run.device)
    with startup_step("building the data loaders"):
        loader, val_loader = make_loaders(args, train_set, val_set, info, run.ctx, run.device)
    loop = start_phase(run, Phase(
        name="train", model=model, net=model, step=cross_entropy_step, learn=list(model.parameters()), loader=loader,
        epochs=args.epochs, lr=args.lr, arch=info.name, lr_at=lr_at, checkpoints=frozenset(checkpoints),
        track=tracked_weights(info), validate=accuracy_validation(model, val_loader, run.device),
        meta={"classes": train_set.classes, "num_classes": len(train_set.classes)}))
    run.record.update(checkpoints=checkpoints, classes=train_set.classes, model=model_record(info))
    with run.record.running(run.ctx.is_main):
        result = finish_phase(loop)
    if run.ctx.is_main:
        record_final(run, result)
    cleanup_distributed()


def record_final(run, result) -> None:
    """run.json's last epoch and best val top-1, saved ``complete`` (rank 0), and the line saying so."""
    final = result.history[-1] if result.history else {}
    run.record.update(final=final, best_acc1=result.best_acc1)
    run.record.save("complete")
    log.info("done: %s (val top-1 %.2f%%, best %.2f%%)", run.args.out, final.get("val_acc1", float("nan")),
             result.best_acc1)


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
