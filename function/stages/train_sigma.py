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

import argparse
import logging
from pathlib import Path

from kdq.function.archs import add_arch_args
from kdq.function.checks import SIGMA0
from kdq.function.cli import (Parser, add_device_arg, finite_float, nonnegative_int, positive_float, positive_int,
                             run, seed, within)
from kdq.function.data.options import add_foreground_args
from kdq.models import LAYERS

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("the net")
    src.add_argument("--checkpoint_root", "--checkpoint-root", dest="checkpoint_root", type=Path, required=True,
                     help="training run folder holding <e>.pth.tar checkpoints (train_net or distillation)")
    add_arch_args(src, recorded="the --checkpoint_root run")
    src.add_argument("--layer", required=True, choices=LAYERS, help="layer whose feature h = ReLU(layer(x)) is kept")
    src.add_argument("--checkpoints", nargs="+", type=int, default=None, metavar="E",
                     help="epochs to fit, stored oldest first (default: the original's schedule 0 2 5 10 ... 150, "
                          "and 170 ... 400 when the run has 400.pth.tar, when the run holds all of its epochs; "
                          "otherwise every checkpoint in the run)")
    d = p.add_argument_group("images")
    d.add_argument("--data", type=Path, required=True, help="dataset root (<root>/<split>/<class>/<image>)")
    d.add_argument("--split", default="train", help="split to draw images from")
    add_foreground_args(d)
    d.add_argument("--pic-num", type=positive_int, default=500,
                   help="images drawn from the split: random.seed(--pic-seed); random.sample(range(N), pic_num) "
                        "over the split listed class by class (classes and files sorted), as the original")
    d.add_argument("--pic-seed", type=seed, default=0, help="seed of the draw (the original's --pic_seed)")
    d.add_argument("--effect-num", type=positive_int, default=50, help="stop once this many effective images exist")
    d.add_argument("--effective-rule", choices=("on", "off"), default="on",
                   help="off: keep every image with σ_f² > 0, skipping the fg/bg entropy rule (to look at all "
                        "drawn images; not the paper's method)")
    d.add_argument("--effective-start", type=nonnegative_int, default=None, metavar="E",
                   help="first epoch at which the fg/bg rule applies (default: 40, as the original, for runs of "
                        "150 epochs or more; 40 of 150 scaled to a shorter run)")
    f = p.add_argument_group("the fit (docs/method.md §2 defaults)")
    f.add_argument("--grid", type=positive_int, default=16,
                   help="σ is grid×grid cells (a grid that does not divide the input size gives uneven cells, as "
                        "the original's nearest upsampling: AlexNet's 227 px with 16 cells of 14 or 15 pixels)")
    f.add_argument("--samples", type=positive_int, default=96, help="noise samples per step (and for σ_f²)")
    f.add_argument("--steps", type=positive_int, default=80, help="SGD steps T")
    f.add_argument("--break-steps", type=int, default=20,
                   help="T_break: after step T-T_break-1 stop if the target entropy was exceeded, else λ×1.5")
    f.add_argument("--lr", type=positive_float, default=1e-4, help="SGD learning rate on σ")
    f.add_argument("--sigma0", type=within(SIGMA0), default=0.01,
                   help="initial σ and noise scale of σ_f² (σ is clamped to [0.001, 1] during the fit)")
    f.add_argument("--target-entropy", type=finite_float, default=-2.8, help="H*: σ* is the step whose H̄ is nearest")
    f.add_argument("--lambda", dest="lam", type=positive_float, default=None,
                   help="entropy weight λ (default: 6 for ResNets, 7 for VGG, AlexNet and any other model)")
    r = p.add_argument_group("speed")
    r.add_argument("--batch-images", type=positive_int, default=1,
                   help="images fitted at once (independent σ, noise, λ and stopping); raise it on a GPU")
    r.add_argument("--sample-chunk", type=positive_int, default=None,
                   help="noise samples per forward pass, gradients accumulated (same result up to rounding, less "
                        "memory); default: 32 on the CPU (faster), else all, halved automatically on CUDA "
                        "out-of-memory")
    r.add_argument("--amp", nargs="?", const="bf16", choices=("bf16", "fp16"), default=None,
                   help="autocast the net's forward (bf16 unless fp16 is named); changes the maps slightly")
    r.add_argument("--channels-last", action="store_true", help="channels-last memory format for conv nets")
    r.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick the fastest conv algorithms")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile (inductor) the truncated forward h = ReLU(layer(x)); the first fits pay the "
                        "compile time (tens of seconds on a CPU); same maps up to float rounding, so --resume "
                        "accepts a run made with or without it")
    o = p.add_argument_group("run")
    o.add_argument("--out", type=Path, required=True, help="sigma run folder to write")
    o.add_argument("--seed", type=seed, default=0, help="seed of every image's noise (by image and epoch)")
    add_device_arg(o)
    o.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (slower on CUDA): two runs write byte-identical files")
    o.add_argument("--resume", action="store_true", help="continue the run in --out (finished images are kept)")
    o.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")
    o.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (they are plain lines anyway when stderr is not a terminal)")
    return p


def main(args: argparse.Namespace) -> None:
    import torch

    from kdq.function.archs import model_record
    from kdq.function.io.rundir import RunRecord, check_out_apart, open_run
    from kdq.function.runtime import all_ok, cleanup_distributed, init_distributed, set_deterministic
    from kdq.function.sigma import layout
    from kdq.function.sigma.run import check_resumable, plan_run, prepare_model, run_images

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
        if args.amp and device.type != "cuda":
            log.warning("--amp on %s uses its autocast (%s); it is meant for CUDA", device.type, args.amp)
        model, fitter = prepare_model(plan, device)
        done = run_images(plan, fitter, model, args.out, ctx, device, args.effect_num, args.batch_images, args.seed,
                          show=ctx.is_main and args.progress)
    if ctx.is_main:
        record.update(effective=done.effective, non_effective=done.non_effective, processed=done.processed,
                      fits_this_session=done.fits,
                      seconds_per_fit=round(done.fit_seconds / done.fits, 4) if done.fits else None,
                      loop_wall_s=round(done.wall_s, 3), sample_chunk_used=fitter.chunk, resumed=resume)
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
