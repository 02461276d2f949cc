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
import copy
import dataclasses
import logging
from pathlib import Path

from kdq.function.cli import UserError, run
from kdq.function.config import build_parser
from kdq.function.train.config import DistillConfig

log = logging.getLogger(__name__)

FINAL = "final.pth.tar"


def get_args_parser() -> argparse.ArgumentParser:
    """The stage's flags: one per field of :class:`~kdq.function.train.config.DistillConfig` (parse_args returns it)."""
    return build_parser(DistillConfig, __doc__.split("\n\n")[0])


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validation that needs no file (one-line UserErrors), and a copy of ``args`` with the value that depends
    on other flags filled in (``--layer`` of hinton): what the run records."""
    if args.method == "feature" and args.layer is None:
        raise UserError("--layer is required with --method feature (one of conv, fc1, fc2, fc3)")
    if args.method == "hinton" and args.layer not in (None, "fc3"):
        raise UserError(f"--method hinton distils the logits (fc3); --layer {args.layer} does not apply")
    if args.adapter and args.method != "feature":
        raise UserError("--adapter applies to --method feature only")
    return with_field(args, layer="fc3" if args.method == "hinton" else args.layer)


def with_field(args, **fields):
    """A copy of ``args`` (an argparse.Namespace or a config dataclass) with ``fields`` set; ``args`` is unchanged."""
    if dataclasses.is_dataclass(args):
        return dataclasses.replace(args, **fields)
    resolved = copy.copy(args)
    for name, value in fields.items():
        setattr(resolved, name, value)
    return resolved


def main(args: argparse.Namespace) -> None:
    """Distil a student from the frozen teacher (phase 1), then fine-tune the layers above ``--layer`` on labels
    (phase 2, where it applies), after every check that needs no output folder."""
    from kdq.function.runtime import cleanup_distributed, use_threads
    from kdq.function.train.engine import evaluate
    from kdq.function.train.phase import finish_phase, start_phase
    from kdq.function.train.stage import data_identity, resolved_augment, setup

    args = use_threads(resolve_args(args))  # a resolved copy (the caller's is left as parsed), threads set
    plan = plan_run(args)
    run = setup(args, "distillation", {"augment": resolved_augment(args), "modality": plan.info.modality,
                                       **data_identity(plan.train_set)})
    if run.complete:
        return
    run.seed()  # the student is built first after seeding, as in train_net: same --arch/--seed → same initialisation
    d = build_distillation(run, args, plan)
    first = start_phase(run, first_phase(d, args, plan))  # a damaged resume state is refused before "running"
    run.record.update(**run_facts(args, plan))
    with run.record.running(run.ctx.is_main):
        distilled = finish_phase(first)
        del first  # phase 1's DDP wrapper and optimizer go before phase 2 builds its own
        run.record.update(distill={"epochs": args.epochs, "last": distilled.history[-1] if distilled.history else {}})
        warn_phase1(run, distilled.history)
        tuned = finetune(run, d, args, plan.info)
        final_val = evaluate(d.model, d.val_loader, run.device) if d.val_loader else {}
    if run.ctx.is_main:
        save_final(run, tuned or distilled, "finetune" if tuned else "distill", final_val)
    cleanup_distributed()


@dataclasses.dataclass(frozen=True)
class Plan:
    """What distillation checks and loads before anything is written: the student's and the teacher's
    architectures, the checkpoint epochs, the splits, the frozen teacher and phase 1's learning rate by epoch."""
    info: Any
    teacher_info: Any
    checkpoints: list[int]
    train_set: Any
    val_set: Any
    teacher: Any
    lr_at: Any


def plan_run(args) -> Plan:
    """Every check of a distillation run that needs no output folder (one-line UserErrors), in the order the
    stage has always made them, and what they load."""
    from kdq.function.archs import arch_from, check_input_size, resolve_arch, student_arch
    from kdq.function.io.rundir import read_run_json
    from kdq.function.train.distill import prepare_teacher
    from kdq.function.train.stage import check_dropout, check_splits, checked_checkpoints, checked_lr_schedule, \
        study_data

    info = resolve_arch(args.arch, args.taps, args.image_size)
    teacher_run = read_run_json(args.teacher_checkpoint.parent) if args.teacher_format == "kdq" else {}
    teacher_info = arch_from(args, teacher_run, "teacher-", f"the teacher's run {args.teacher_checkpoint.parent}")
    info = student_arch(args, info, teacher_info)  # the teacher's own arch: its taps and image size by default
    if teacher_info.modality != info.modality:
        raise UserError(f"the teacher takes {teacher_info.modality} inputs ({teacher_info.name}), the student "
                        f"{info.modality} inputs ({info.name}): one loader feeds both")
    if info.modality == "image" and teacher_info.input_size != info.input_size:  # tokens: the data's length, below
        raise UserError(f"the teacher takes {teacher_info.input_size} px inputs, the student {info.input_size} px: "
                        "one loader feeds both (--image-size / --teacher-image-size)")
    checkpoints = checked_checkpoints(args)
    _, info, train_set, val_set = study_data(args, info)
    if teacher_info.options != info.options:
        raise UserError(f"the teacher was trained with {teacher_info.options}, the student's data give "
                        f"{info.options}: distil on the teacher's dataset (its vocabulary and length)")
    num_classes = len(train_set.classes)
    check_dropout(args.dropout, info)
    check_input_size(info, num_classes)
    check_input_size(teacher_info, num_classes, "--teacher-image-size")
    teacher = prepare_teacher(args.teacher_checkpoint, teacher_info, args.teacher_format, args.teacher_mode, info,
                              args.layer, args.method, args.adapter, train_set.classes, args.split, args.dropout)
    lr_at = checked_lr_schedule(args)
    check_splits(args, train_set, val_set)
    return Plan(info, teacher_info, checkpoints, train_set, val_set, teacher, lr_at)


def build_distillation(run, args, plan: Plan):
    """The student (built first: call it right after seeding), its adapter, the teacher on the device and the
    loaders: the :class:`~kdq.function.train.distill.Distillation` the phases share."""
    from kdq.function.archs import probe_input
    from kdq.function.runtime import startup_step
    from kdq.function.train.distill import Distillation, build_student, split_at_layer
    from kdq.function.train.stage import make_loaders
    from kdq.models import truncated

    info, classes = plan.info, plan.train_set.classes
    with startup_step("building the student and the teacher"):
        student, adapter = build_student(info, len(classes), args.dropout, plan.teacher, args.adapter, run.device)
        below, frozen_modules = split_at_layer(student, info.taps[args.layer], info.input_size, probe_input(info))
    with startup_step("building the data loaders"):
        loader, val_loader = make_loaders(args, plan.train_set, plan.val_set, info, run.ctx, run.device)
    meta = {"classes": classes, "num_classes": len(classes), "method": args.method, "layer": args.layer,
            "teacher_arch": plan.teacher_info.name}
    return Distillation(model=student, fn=truncated(student, info.taps[args.layer]), adapter=adapter,
                        teacher=plan.teacher, below=below, frozen_modules=frozen_modules, arch=info.name,
                        loader=loader, val_loader=val_loader, device=run.device, meta=meta)


def first_phase(d, args, plan: Plan):
    """Phase 1: ``--method feature`` regresses the teacher's feature at ``--layer``, ``hinton`` its logits."""
    from kdq.function.train.distill import feature_phase, hinton_phase
    from kdq.function.train.phase import tracked_weights

    schedule = {"epochs": args.epochs, "lr": args.lr, "lr_at": plan.lr_at, "checkpoints": plan.checkpoints,
                "track": tracked_weights(plan.info)}
    if args.method == "feature":
        return feature_phase(d, **schedule)
    return hinton_phase(d, **schedule, temperature=args.temperature, alpha=args.alpha)


def run_facts(args, plan: Plan) -> dict:
    """What run.json records of the run before phase 1: checkpoints, classes, method, layer, both models and the
    feature shapes at the layer."""
    from kdq.function.archs import model_record

    teacher = plan.teacher
    return {"checkpoints": plan.checkpoints, "classes": plan.train_set.classes, "method": args.method,
            "layer": args.layer, "model": model_record(plan.info),
            "teacher": {"checkpoint": str(args.teacher_checkpoint), "arch": plan.teacher_info.name,
                        "model": model_record(plan.teacher_info), "format": args.teacher_format,
                        "mode": args.teacher_mode, **teacher.meta},
            "feature_shape": {"student": list(teacher.student_shape), "teacher": list(teacher.teacher_shape)}}


def warn_phase1(run, history: list[dict]) -> None:
    """A diverged or flat phase 1 (:func:`~kdq.function.train.distill.phase1_warning`): one warning, also recorded
    in run.json (``notes``)."""
    from kdq.function.train.distill import phase1_warning

    message = phase1_warning(history)
    if message is not None:
        if run.ctx.is_main:
            log.warning("%s", message)
        run.record.update(notes=[*run.record.data.get("notes", []), message])


def skipped_finetune(args) -> str | None:
    """Why phase 2 does not run (``fc3`` is the output layer, hinton trains the whole net, --finetune-epochs 0),
    or None when it runs."""
    if args.layer == "fc3":
        return "fc3 is the output layer"
    if args.method == "hinton":
        return "hinton trains the whole net"
    return "--finetune-epochs 0" if args.finetune_epochs == 0 else None


def finetune(run, d, args, info):
    """Phase 2 where it applies: the layers up to ``--layer`` frozen, those above learn on labels; recorded in
    run.json (or why it was skipped).  Its :class:`~kdq.function.train.phase.PhaseResult`, or None."""
    from kdq.function.train.distill import finetune_phase
    from kdq.function.train.phase import Plateau, run_phase

    why = skipped_finetune(args)
    if why is not None:
        run.record.update(finetune={"skipped": why})
        return None
    lr = args.finetune_lr if args.finetune_lr is not None else info.defaults.finetune_lr
    plateau = Plateau(args.finetune_factor, args.finetune_patience)
    tuned = run_phase(run, finetune_phase(d, args.finetune_epochs, lr, plateau, args.frozen_mode))
    run.record.update(finetune={"epochs": args.finetune_epochs, "last": tuned.history[-1],
                                "best_val_acc1": tuned.best_acc1 if d.val_loader else None})
    return tuned


def save_final(run, last, phase: str, final_val: dict) -> None:
    """``final.pth.tar`` (the last phase's last epoch, the phase's name and the final validation), run.json saved
    ``complete`` and the line saying so (rank 0)."""
    from kdq.function.io.checkpoint import save_checkpoint

    state = dict(last.last_state)
    state.update(phase=phase, **final_val)
    save_checkpoint(run.args.out / FINAL, state)
    run.record.update(final_checkpoint=FINAL, final_val_acc1=final_val.get("val_acc1"),
                      final_val_loss=final_val.get("val_loss"))
    run.record.save("complete")
    log.info("done: %s (final val top-1 %s)", run.args.out,
             f"{final_val['val_acc1']:.2f}%" if final_val else "n/a (no --val-split)")


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
