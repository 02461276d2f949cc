"""Stage 2: distil a student from a frozen teacher, then fine-tune its upper layers on labels (SPEC §1).

    python distillation/distillation.py --teacher_checkpoint runs/teacher/20.pth.tar --teacher-arch vgg_tiny \
        --arch vgg_tiny --layer fc1 --data data/embedded --split train --val-split val \
        --epochs 30 --finetune-epochs 30 --out runs/distil_fc1

Phase 1 (``--method feature``): the student's layers up to and including ``--layer`` regress the teacher's
pre-activation output there (MSE); nothing above the layer runs or changes.  It writes ``<e>.pth.tar`` on
the checkpoint schedule (0 = the initialisation, which equals train_net's for the same --arch and --seed),
``weight_diff.npy`` (4, epochs+1) and ``distill_log.{json,csv}`` exactly like train_net.
Phase 2: those layers are frozen and the layers above learn with cross-entropy (ReduceLROnPlateau on the
validation loss); it writes ``finetune_log.{json,csv}`` and ``final.pth.tar`` and leaves phase 1's files alone.
Distilling ``fc3`` has no phase 2.  ``--method hinton`` trains the whole student on logit KD instead
(no phase 2).  ``run.json`` records the final val top-1; ``--resume`` continues an interrupted run exactly.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

from kdq.function.io.checkpoint import save_checkpoint
from kdq.function.cli import Parser, UserError, finite_float, positive_float, positive_int, run
from kdq.function.train.distill import (TEACHER_FORMATS, HintonLoss, evaluate_feature_mse, feature_mse, feature_shape,
                              freeze_teacher, load_teacher, make_adapter)
from kdq.function.runtime import cleanup_distributed
from kdq.function.train.engine import EpochLoop, evaluate
from kdq.function.train.schedules import lr_schedule, parse_epochs
from kdq.function.archs import arch_or_error
from kdq.function.train.stage import (add_common_training_args, add_sgd_args, load_splits, make_loaders,
                                      resolved_augment, setup)
from kdq.function.train.weight_distance import WeightDistance
from kdq.models import LAYERS, MODELS, build_model, feature_fn

log = logging.getLogger(__name__)

FINETUNE_LR = {"vgg": 1e-3, "alexnet": 1e-3, "resnet": 1e-2}  # SPEC §1, by architecture family
FINAL = "final.pth.tar"


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    t = p.add_argument_group("teacher")
    t.add_argument("--teacher_checkpoint", "--teacher-checkpoint", dest="teacher_checkpoint", type=Path,
                   required=True, help="the teacher's weights: a train_net checkpoint (or see --teacher-format)")
    t.add_argument("--teacher-arch", required=True, help=f"the teacher's architecture: {', '.join(MODELS)}")
    t.add_argument("--teacher-format", choices=TEACHER_FORMATS, default="kdq",
                   help="kdq: a train_net / original-code checkpoint (net.* keys); torchvision: a torchvision "
                        "state dict of the whole model (features.*, classifier.*)")
    t.add_argument("--teacher-mode", choices=("eval", "train"), default="eval",
                   help="mode of the frozen teacher: eval (the original calls teacher_model.eval()) or train "
                        "(dropout on, BatchNorm on batch statistics without updating them)")
    s = p.add_argument_group("student")
    s.add_argument("--arch", required=True, help=f"the student's architecture: {', '.join(MODELS)}")
    s.add_argument("--layer", choices=LAYERS, default=None,
                   help="layer whose pre-activation output is distilled (required for --method feature; "
                        "hinton distils the logits, fc3)")
    s.add_argument("--dropout", type=finite_float, default=None,
                   help="dropout of the student's fc head (None: the arch's 0.5)")
    s.add_argument("--method", choices=("feature", "hinton"), default="feature",
                   help="feature: MSE on the layer's feature (the paper); hinton: logit KD (Hinton et al. 2015)")
    s.add_argument("--adapter", action="store_true",
                   help="learn a 1x1 conv (conv features) or linear map (fc features) on the student side, so "
                        "a student whose layer has another width can regress the teacher's")
    s.add_argument("--temperature", type=positive_float, default=4.0, help="hinton: softmax temperature T")
    s.add_argument("--alpha", type=finite_float, default=0.9,
                   help="hinton: weight of the soft term: α·T²·KL(teacher‖student) + (1−α)·CE")
    o = p.add_argument_group("phase 1: distillation")
    o.add_argument("--epochs", type=positive_int, default=150, help="distillation epochs")
    add_sgd_args(o, schedule="constant", lr=0.01, lr_help=" of phase 1 (the original's notes suggest 1e-4 to 1e-3 by "
                 "layer for VGG; its argparse default, 1, belonged to its last ResNet experiment)",
                 batch_help="global batch size of both phases", scope=" of both phases")
    f = p.add_argument_group("phase 2: fine-tuning the layers above --layer on labels")
    f.add_argument("--finetune-epochs", type=int, default=100, help="fine-tuning epochs (0: none)")
    f.add_argument("--finetune-lr", type=positive_float, default=None,
                   help="learning rate (default by family: 1e-3 vgg/alexnet, 1e-2 resnet)")
    f.add_argument("--finetune-factor", type=positive_float, default=0.3, help="ReduceLROnPlateau factor")
    f.add_argument("--finetune-patience", type=int, default=10, help="ReduceLROnPlateau patience (epochs)")
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
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.adapter and args.method != "feature":
        raise UserError("--adapter applies to --method feature only")
    if args.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    resolved = argparse.Namespace(**vars(args))
    resolved.layer = "fc3" if args.method == "hinton" else args.layer
    return resolved


def prepare_teacher(args: argparse.Namespace, input_size: int, classes: list[str]):
    """Load the frozen teacher and check it against the student (before any output is written).

    Returns ``(teacher, teacher_fn, teacher_meta, student_shape, teacher_shape)``: ``teacher_fn`` is the
    teacher's truncated forward at ``--layer`` (the whole net for hinton), the shapes are per sample.
    """
    teacher, meta = load_teacher(args.teacher_checkpoint, args.teacher_arch, args.teacher_format)
    if args.method == "hinton" or args.layer == "fc3":  # logits are compared class by class
        if meta["num_classes"] != len(classes):
            raise UserError(f"--teacher_checkpoint: the teacher has {meta['num_classes']} classes, split "
                            f"{args.split!r} has {len(classes)}; distilling logits needs the same classes")
        if meta["classes"] is not None and meta["classes"] != classes:
            raise UserError(f"--teacher_checkpoint: the teacher's classes ({', '.join(meta['classes'][:3])}, ...) "
                            f"are not those of split {args.split!r} in the same order")
    freeze_teacher(teacher, args.teacher_mode)
    teacher_fn = teacher if args.method == "hinton" else feature_fn(teacher, args.teacher_arch, args.layer)
    with torch.random.fork_rng(devices=[]):
        probe = build_model(args.arch, len(classes), dropout=args.dropout)
    student_shape = feature_shape(feature_fn(probe, args.arch, args.layer), input_size)
    teacher_shape = feature_shape(teacher_fn, input_size)
    if args.adapter:
        try:
            make_adapter(student_shape, teacher_shape)
        except ValueError as exc:
            raise UserError(f"--adapter at --layer {args.layer}: {exc}") from None
    elif student_shape != teacher_shape:
        raise UserError(f"--layer {args.layer}: the teacher's feature ({args.teacher_arch}) has shape "
                        f"{teacher_shape} but the student's ({args.arch}) has {student_shape}; they must agree"
                        + (" (or pass --adapter to learn a map between them)" if args.method == "feature" else ""))
    return teacher, teacher_fn, meta, student_shape, teacher_shape


def main(args: argparse.Namespace) -> None:
    args = resolve_args(args)  # a resolved copy: the caller's namespace is left as parsed
    info = arch_or_error(args.arch)
    arch_or_error(args.teacher_arch, "--teacher-arch")
    try:
        checkpoints = parse_epochs(args.checkpoints, args.epochs)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    train_set, val_set = load_splits(args, info.input_size)
    num_classes = len(train_set.classes)
    teacher, teacher_fn, teacher_meta, student_shape, teacher_shape = prepare_teacher(
        args, info.input_size, train_set.classes)

    ctx, device, record = setup(args, "distillation", {"augment": resolved_augment(args)})
    if record is None:
        return
    # the student is built first after seeding, as in train_net: same --arch/--seed → same initialisation
    student = build_model(args.arch, num_classes, dropout=args.dropout).to(device)
    adapter = make_adapter(student_shape, teacher_shape).to(device) if args.adapter else None
    teacher.to(device)

    loader, val_loader = make_loaders(args, train_set, val_set, info, ctx, device)
    meta = {"classes": train_set.classes, "num_classes": num_classes, "method": args.method,
            "layer": args.layer, "teacher_arch": args.teacher_arch}

    # --- phase 1
    student_fn = feature_fn(student, args.arch, args.layer)
    if args.method == "feature":
        regressor = student_fn if adapter is None else nn.Sequential(student_fn, adapter)
        learn = list(regressor.parameters())
        net = nn.parallel.DistributedDataParallel(regressor) if ctx.enabled else regressor

        def step(images, labels):
            with torch.no_grad():
                target = teacher_fn(images)
            return feature_mse(net(images), target), None

        validate = (lambda: evaluate_feature_mse(student_fn, teacher_fn, val_loader, device, adapter)) \
            if val_loader else None
    else:
        kd = HintonLoss(args.temperature, args.alpha)
        learn = list(student.parameters())
        net = nn.parallel.DistributedDataParallel(student) if ctx.enabled else student

        def step(images, labels):
            with torch.no_grad():
                target = teacher(images)
            logits = net(images)
            return kd(logits, target, labels), (logits.argmax(1) == labels).sum()

        validate = (lambda: evaluate(student, val_loader, device)) if val_loader else None

    optimizer = torch.optim.SGD(learn, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    distill = EpochLoop(out=args.out, model=student, optimizer=optimizer, step_fn=step, loader=loader,
                        device=device, ctx=ctx, seed=args.seed, epochs=args.epochs, arch=args.arch,
                        checkpoints=set(checkpoints),
                        tracker=WeightDistance(student, {layer: tap.weight for layer, tap in info.taps.items()}),
                        lr_at=lr_schedule(args.lr_schedule, args.lr, args.epochs, args.lr_down), validate=validate, name="distill",
                        meta={**meta, "phase": "distill"},
                        extra_modules={"adapter": adapter} if adapter is not None else {})
    if args.resume:
        distill.try_resume()
    record.update(checkpoints=checkpoints, classes=train_set.classes, method=args.method, layer=args.layer,
                  teacher={"checkpoint": str(args.teacher_checkpoint), "arch": args.teacher_arch,
                           "format": args.teacher_format, "mode": args.teacher_mode, **teacher_meta},
                  feature_shape={"student": list(student_shape), "teacher": list(teacher_shape)})
    if ctx.is_main:
        record.save("running")
    history = distill.run()
    del net
    record.update(distill={"epochs": args.epochs, "last": history[-1] if history else {}})

    # --- phase 2
    finetune = args.method == "feature" and args.layer != "fc3" and args.finetune_epochs > 0
    last = distill
    if finetune:
        last = run_finetune(args, info.family, student, student_fn, loader, val_loader, device, ctx, meta)
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


def run_finetune(args, family, student, frozen, loader, val_loader, device, ctx, meta) -> EpochLoop:
    """Phase 2: freeze the distilled layers (``frozen``'s parameters), train the rest with cross-entropy."""
    frozen_ids = {id(p) for p in frozen.parameters()}
    for p in frozen.parameters():
        p.requires_grad_(False)
    trainable = [p for p in student.parameters() if id(p) not in frozen_ids]
    lr = args.finetune_lr if args.finetune_lr is not None else FINETUNE_LR[family]
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=args.finetune_factor,
                                                         patience=args.finetune_patience)
    net = nn.parallel.DistributedDataParallel(student) if ctx.enabled else student

    def step(images, labels):
        logits = net(images)
        return nn.functional.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()

    def train_mode():
        student.train()
        if args.frozen_mode == "eval":
            frozen.eval()

    loop = EpochLoop(out=args.out, model=student, optimizer=optimizer, step_fn=step, loader=loader,
                     device=device, ctx=ctx, seed=args.seed, epochs=args.finetune_epochs, arch=args.arch,
                     checkpoints=set(), tracker=None, lr_at=None, plateau=plateau,
                     validate=(lambda: evaluate(student, val_loader, device)) if val_loader else None,
                     name="finetune", meta={**meta, "phase": "finetune"}, train_mode=train_mode)
    if args.resume:
        loop.try_resume()
    loop.run()
    return loop


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
