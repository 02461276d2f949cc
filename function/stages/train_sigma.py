"""Stage 3: fit one information-discarding map σ per (image, checkpoint) of a training run (docs/method.md §2).

    python sigma/train_sigma.py --checkpoint_root runs/label --arch vgg_tiny --layer conv \\
        --data data/embedded --split train --out runs/sigma/label_conv

Images are drawn at random (seeded) from the split; each is fitted at every checkpoint from the last
to the first, and dropped as non-effective when σ_f² = 0 or, at checkpoints from epoch 40 of 150
(scaled to the run's length) on, when its background entropy is below its foreground entropy.  The
run stops once ``--effect-num`` effective images exist or the ``--pic-num`` draw is used up.

Writes the docs/method.md §4 layout: ``full_name_list.txt`` (the draw; ``i`` of ``img_<i>_*`` indexes it),
``effect_name_list.txt``, ``non_effect_name_list.txt``, ``img_<i>_effect/npy_files/*.npy`` for every
effective image, and ``img_<i>_non_effect/npy_files/*.npy`` (what was computed before it was dropped;
the original code kept that folder too, without arrays), plus ``img_<i>_*/fit.json`` and ``run.json``.
An image folder is written under a temporary name and renamed, so ``--resume`` never recomputes a
finished image and redoes a half-written one.  Runs under ``torchrun`` (images sharded over ranks).
"""
from __future__ import annotations

import logging

from kdq.function.cli import run
from kdq.function.config import build_parser
from kdq.function.sigma.config import SigmaRunConfig

log = logging.getLogger(__name__)


def get_args_parser():
    """The stage's flags: one per field of :class:`~kdq.function.sigma.config.SigmaRunConfig` (parse_args returns
    it)."""
    return build_parser(SigmaRunConfig, __doc__.split("\n\n")[0])


def main(args: SigmaRunConfig) -> None:
    import torch

    from kdq.function.archs import model_record
    from kdq.function.io.rundir import RunRecord, check_out_apart, open_run
    from kdq.function.runtime import all_ok, cleanup_distributed, init_distributed, set_deterministic, use_threads
    from kdq.function.sigma import layout
    from kdq.function.sigma.precision import amp_warning
    from kdq.function.sigma.run import check_resumable, plan_run, prepare_model, run_images

    args = use_threads(args)  # torch's CPU threads (--threads), the count recorded in run.json
    check_out_apart(args.out, args)
    plan = plan_run(args)  # every check that needs no writing
    ctx, device = init_distributed(args.device)
    resume = open_run(args.out, "train_sigma", args, ctx, device, lambda: check_resumable(args.out, args, plan))
    record = RunRecord(args.out, "train_sigma", args, {"world_size": ctx.world_size}, plan.resolved())
    record.update(model=model_record(plan.info))
    record.update(checkpoints=plan.epochs, total_epochs=plan.checkpoints.total_epochs,
                  effective_rule_start=plan.rule_start, num_classes=plan.checkpoints.num_classes,
                  input_size=plan.info.input_size, candidates=len(plan.names), **{"lambda": plan.config.lam})
    with record.running(ctx.is_main):  # run.json first: a folder holding sigma files always says what made them
        if ctx.is_main:
            layout.write_names(args.out / layout.FULL_LIST, plan.names)
        all_ok(True, device)  # a barrier: no rank writes an image before run.json and the draw are there

        set_deterministic(args.deterministic)
        if args.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        amp_note = amp_warning(device.type, args.amp)  # none for bf16 on a CPU with bf16 units
        if amp_note:
            log.warning(amp_note)
        model, fitter = prepare_model(plan, device)
        done = run_images(plan, fitter, model, args.out, ctx, device, args.effect_num, args.batch_images, args.seed,
                          show=ctx.is_main and args.progress)
    if ctx.is_main:
        record.update(effective=done.effective, non_effective=done.non_effective, processed=done.processed,
                      fits_this_session=done.fits,
                      seconds_per_fit=round(done.fit_seconds / done.fits, 4) if done.fits else None,
                      loop_wall_s=round(done.wall_s, 3), sample_chunk_used=fitter.chunk, resumed=resume)
        if done.notes:  # traps met on the way (σ_f² = 0 at a checkpoint), also logged as warnings
            record.update(notes=done.notes)
        record.save("complete")
        per_fit = f", {done.fit_seconds / done.fits:.2f} s/fit" if done.fits else ""
        print(f"sigma: {done.effective} effective, {done.non_effective} non-effective of {done.processed} processed "
              f"images ({len(plan.names)} drawn; {len(plan.epochs)} checkpoints, {done.fits} fits in "
              f"{done.wall_s:.0f} s{per_fit}) -> {args.out}")
    cleanup_distributed()


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
