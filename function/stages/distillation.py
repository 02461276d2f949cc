"""Stage 2: distil a student from a frozen teacher, then fine-tune its upper layers on labels (docs/method.md §1).

    python distillation/distillation.py --teacher_checkpoint runs/teacher/20.pth.tar --teacher-arch vgg_tiny \\
        --arch vgg_tiny --layer fc1 --data data/embedded --split train --val-split val \\
        --epochs 30 --finetune-epochs 30 --out runs/distil_fc1

Phase 1 (``--method feature``): the student's layers up to and including ``--layer`` regress the teacher's
pre-activation output there (MSE); nothing above the layer runs or changes.  It writes ``<e>.pth.tar`` on
the checkpoint schedule (0 = the initialisation, which equals train_net's for the same --arch and --seed),
``weight_diff.npy`` (4, epochs+1) and ``distill_log.{json,csv}`` exactly like train_net.
Phase 2: those layers are frozen and the layers above learn with cross-entropy (ReduceLROnPlateau on the
validation loss); it writes ``finetune_log.{json,csv}`` and ``final.pth.tar`` and leaves phase 1's files alone.
Distilling ``fc3`` has no phase 2.  ``--method hinton`` trains the whole student on logit KD instead
(no phase 2).  ``run.json`` records the final val top-1; ``--resume`` continues an interrupted run exactly.
The method and its defaults: docs/method.md.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kdq.function.archs import add_arch_args
from kdq.function.cli import (Parser, UserError, epoch_count, epoch_count_or_zero, in_range, nonnegative_int,
                             positive_float, run)
from kdq.function.train.options import TEACHER_FORMATS, add_common_training_args, add_sgd_args
from kdq.models import LAYERS

log = logging.getLogger(__name__)

FINAL = "final.pth.tar"


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    t = p.add_argument_group("teacher")
    t.add_argument("--teacher_checkpoint", "--teacher-checkpoint", dest="teacher_checkpoint", type=Path,
                   required=True, help="the teacher's weights: a train_net checkpoint (or see --teacher-format)")
    add_arch_args(t, prefix="teacher-", what="the teacher", recorded="the teacher's run (its folder's run.json)")
    t.add_argument("--teacher-format", choices=TEACHER_FORMATS, default="kdq",
                   help="kdq: a train_net / original-code checkpoint (net.* keys); torchvision: a torchvision "
                        "state dict of the whole model (features.*, classifier.*)")
    t.add_argument("--teacher-mode", choices=("eval", "train"), default="eval",
                   help="mode of the frozen teacher: eval (the original calls teacher_model.eval()) or train "
                        "(dropout on, BatchNorm on batch statistics without updating them)")
    s = p.add_argument_group("student")
    add_arch_args(s, what="the student")
    s.add_argument("--layer", choices=LAYERS, default=None,
                   help="layer whose pre-activation output is distilled (required for --method feature; "
                        "hinton distils the logits, fc3)")
    s.add_argument("--dropout", type=in_range(0, 1, hi_included=False), default=None,
                   help="dropout of the student's fc head (registry architectures; default: the arch's 0.5)")
    s.add_argument("--method", choices=("feature", "hinton"), default="feature",
                   help="feature: MSE on the layer's feature (the paper); hinton: logit KD (Hinton et al. 2015)")
    s.add_argument("--adapter", action="store_true",
                   help="learn a 1x1 conv (conv features) or linear map (fc features) on the student side, so "
                        "a student whose layer has another width can regress the teacher's")
    s.add_argument("--temperature", type=positive_float, default=4.0, help="hinton: softmax temperature T")
    s.add_argument("--alpha", type=in_range(0, 1), default=0.9,
                   help="hinton: weight of the soft term: α·T²·KL(teacher‖student) + (1−α)·CE")
    o = p.add_argument_group("phase 1: distillation")
    o.add_argument("--epochs", type=epoch_count, default=150, help="distillation epochs")
    add_sgd_args(o, schedule="constant", lr=0.01, lr_help=" of phase 1 (the original's notes suggest 1e-4 to 1e-3 by "
                 "layer for VGG; its argparse default, 1, belonged to its last ResNet experiment)",
                 batch_help="global batch size of both phases", scope=" of both phases")
    f = p.add_argument_group("phase 2: fine-tuning the layers above --layer on labels")
    f.add_argument("--finetune-epochs", type=epoch_count_or_zero, default=100, help="fine-tuning epochs (0: none)")
    f.add_argument("--finetune-lr", type=positive_float, default=None,
                   help="learning rate (default by family: 1e-3 vgg/alexnet and others, 1e-2 resnet)")
    f.add_argument("--finetune-factor", type=in_range(0, 1, False, False), default=0.3, help="ReduceLROnPlateau factor")
    f.add_argument("--finetune-patience", type=nonnegative_int, default=10, help="ReduceLROnPlateau patience (epochs)")
    f.add_argument("--frozen-mode", choices=("train", "eval"), default="train",
                   help="mode of the frozen layers in phase 2: train (the original's model.train(): dropout and "
                        "BatchNorm batch statistics run there, their weights stay fixed) or eval (they compute "
                        "exactly what phase 1 left, BatchNorm statistics included)")
    add_common_training_args(p)
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validation that needs no file (one-line UserErrors), and a copy of ``args`` with the value that depends
    on other flags filled in (``--layer`` of hinton): what the run records."""
    if args.method == "feature" and args.layer is None:
        raise UserError("--layer is required with --method feature (one of conv, fc1, fc2, fc3)")
    if args.method == "hinton" and args.layer not in (None, "fc3"):
        raise UserError(f"--method hinton distils the logits (fc3); --layer {args.layer} does not apply")
    if args.adapter and args.method != "feature":
        raise UserError("--adapter applies to --method feature only")
    resolved = argparse.Namespace(**vars(args))
    resolved.layer = "fc3" if args.method == "hinton" else args.layer
    return resolved


def main(args: argparse.Namespace) -> None:
    import torch
    from torch import nn

    from kdq.function.archs import arch_from, check_input_size, model_record, resolve_arch
    from kdq.function.io.checkpoint import save_checkpoint
    from kdq.function.io.rundir import read_run_json
    from kdq.function.runtime import cleanup_distributed, startup_step
    from kdq.function.train.distill import (HintonLoss, evaluate_feature_mse, feature_mse, make_adapter,
                                            prepare_teacher, split_at_layer)
    from kdq.function.train.engine import EpochLoop, evaluate
    from kdq.function.train.schedules import parse_epochs
    from kdq.function.train.stage import (check_dropout, check_splits, checked_lr_schedule, load_splits, make_loaders,
                                          resolved_augment, setup)
    from kdq.function.train.weight_distance import WeightDistance
    from kdq.models import truncated

    args = resolve_args(args)  # a resolved copy: the caller's namespace is left as parsed
    info = resolve_arch(args.arch, args.taps, args.image_size)
    teacher_run = read_run_json(args.teacher_checkpoint.parent) if args.teacher_format == "kdq" else {}
    teacher_info = arch_from(args, teacher_run, "teacher-", f"the teacher's run {args.teacher_checkpoint.parent}")
    if teacher_info.input_size != info.input_size:
        raise UserError(f"the teacher takes {teacher_info.input_size} px inputs, the student {info.input_size} px: "
                        "one loader feeds both (--image-size / --teacher-image-size)")
    try:
        checkpoints = parse_epochs(args.checkpoints, args.epochs)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    train_set, val_set = load_splits(args, info.input_size)
    num_classes = len(train_set.classes)
    check_dropout(args.dropout, info)
    check_input_size(info, num_classes)
    check_input_size(teacher_info, num_classes, "--teacher-image-size")
    teacher = prepare_teacher(args.teacher_checkpoint, teacher_info, args.teacher_format, args.teacher_mode, info,
                              args.layer, args.method, args.adapter, train_set.classes, args.split, args.dropout)

    lr_at = checked_lr_schedule(args)
    check_splits(args, train_set, val_set)
    ctx, device, record = setup(args, "distillation", {"augment": resolved_augment(args)})
    if record is None:
        return
    with startup_step("building the student and the teacher"):
        # the student is built first after seeding, as in train_net: same --arch/--seed → same initialisation
        student = info.build(num_classes, dropout=args.dropout).to(device)
        adapter = make_adapter(teacher.student_shape, teacher.teacher_shape).to(device) if args.adapter else None
        teacher.model.to(device)
        below, frozen_modules = split_at_layer(student, info.taps[args.layer], info.input_size)

    with startup_step("building the data loaders"):
        loader, val_loader = make_loaders(args, train_set, val_set, info, ctx, device)
    meta = {"classes": train_set.classes, "num_classes": num_classes, "method": args.method,
            "layer": args.layer, "teacher_arch": teacher_info.name}

    # --- phase 1
    student_fn = truncated(student, info.taps[args.layer])
    params = dict(student.named_parameters())
    if args.method == "feature":
        regressor = student_fn if adapter is None else nn.Sequential(student_fn, adapter)
        learn = [params[n] for n in below] + (list(adapter.parameters()) if adapter is not None else [])
        for name, p in params.items():  # only the layers up to --layer learn (DDP then ignores the rest)
            p.requires_grad_(name in below)
        net = nn.parallel.DistributedDataParallel(regressor) if ctx.enabled else regressor

        def step(images, labels):
            with torch.no_grad():
                target = teacher.fn(images)
            return feature_mse(net(images), target), None

        validate = (lambda: evaluate_feature_mse(student_fn, teacher.fn, val_loader, device, adapter)) \
            if val_loader else None
    else:
        kd = HintonLoss(args.temperature, args.alpha)
        learn = list(student.parameters())
        net = nn.parallel.DistributedDataParallel(student) if ctx.enabled else student

        def step(images, labels):
            with torch.no_grad():
                target = teacher.fn(images)
            logits = net(images)
            return kd(logits, target, labels), (logits.argmax(1) == labels).sum()

        validate = (lambda: evaluate(student, val_loader, device)) if val_loader else None

    optimizer = torch.optim.SGD(learn, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    common = {"out": args.out, "model": student, "loader": loader, "device": device, "ctx": ctx, "seed": args.seed,
              "arch": info.name, "save_optimizer": args.save_optimizer, "progress": args.progress,
              "tensorboard": args.tensorboard}
    distill = EpochLoop(optimizer=optimizer, step_fn=step, epochs=args.epochs, checkpoints=set(checkpoints),
                        tracker=WeightDistance(student, {layer: tap.weight for layer, tap in info.taps.items()}),
                        lr_at=lr_at, validate=validate,
                        name="distill", meta={**meta, "phase": "distill"},
                        extra_modules={"adapter": adapter} if adapter is not None else {}, **common)
    if args.resume:
        distill.try_resume()
    record.update(checkpoints=checkpoints, classes=train_set.classes, method=args.method, layer=args.layer,
                  model=model_record(info),
                  teacher={"checkpoint": str(args.teacher_checkpoint), "arch": teacher_info.name,
                           "model": model_record(teacher_info), "format": args.teacher_format,
                           "mode": args.teacher_mode, **teacher.meta},
                  feature_shape={"student": list(teacher.student_shape), "teacher": list(teacher.teacher_shape)})
    with record.running(ctx.is_main):
        history = distill.run()
        del net
        record.update(distill={"epochs": args.epochs, "last": history[-1] if history else {}})

        # --- phase 2: the layers up to --layer frozen, the rest learns on labels
        finetune = args.method == "feature" and args.layer != "fc3" and args.finetune_epochs > 0
        last = distill
        if finetune:
            for name, p in params.items():
                p.requires_grad_(name not in below)
            trainable = [p for name, p in params.items() if name not in below]
            lr = args.finetune_lr if args.finetune_lr is not None else info.defaults.finetune_lr
            ft_optimizer = torch.optim.SGD(trainable, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(ft_optimizer, mode="min", factor=args.finetune_factor,
                                                                 patience=args.finetune_patience)
            ft_net = nn.parallel.DistributedDataParallel(student) if ctx.enabled else student

            def ft_step(images, labels):
                logits = ft_net(images)
                return nn.functional.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()

            def train_mode():
                student.train()
                if args.frozen_mode == "eval":
                    for name in frozen_modules:
                        student.get_submodule(name).eval()

            last = EpochLoop(optimizer=ft_optimizer, step_fn=ft_step, epochs=args.finetune_epochs, checkpoints=set(),
                             tracker=None, lr_at=None, plateau=plateau,
                             validate=(lambda: evaluate(student, val_loader, device)) if val_loader else None,
                             name="finetune", meta={**meta, "phase": "finetune"}, train_mode=train_mode, **common)
            if args.resume:
                last.try_resume()
            last.run()
            record.update(finetune={"epochs": args.finetune_epochs, "last": last.history[-1],
                                    "best_val_acc1": last.best_acc1 if val_loader else None})
        else:
            why = "fc3 is the output layer" if args.layer == "fc3" else \
                "hinton trains the whole net" if args.method == "hinton" else "--finetune-epochs 0"
            record.update(finetune={"skipped": why})

        final_val = evaluate(student, val_loader, device) if val_loader else {}

    if ctx.is_main:
        state = last.checkpoint_state(last.epochs)
        state.update(phase="finetune" if finetune else "distill", **final_val)
        save_checkpoint(args.out / FINAL, state)
        record.update(final_checkpoint=FINAL, final_val_acc1=final_val.get("val_acc1"),
                      final_val_loss=final_val.get("val_loss"))
        record.save("complete")
        log.info("done: %s (final val top-1 %s)", args.out,
                 f"{final_val['val_acc1']:.2f}%" if final_val else "n/a (no --val-split)")
    cleanup_distributed()


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
