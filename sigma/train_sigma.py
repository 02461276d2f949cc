"""Stage 3: fit one information-discarding map σ per (image, checkpoint) of a training run (SPEC §2).

    python sigma/train_sigma.py --checkpoint_root runs/label --arch vgg_tiny --layer conv \\
        --data data/embedded --split train --out runs/sigma/label_conv

Images are drawn at random (seeded) from the split; each is fitted at every checkpoint from the last
to the first, and dropped as non-effective when σ_f² = 0 or, at checkpoints from epoch 40 of 150
(scaled to the run's length) on, when its background entropy is below its foreground entropy.  The
run stops once ``--effect-num`` effective images exist or the ``--pic-num`` draw is used up.

Writes the SPEC §4 layout: ``full_name_list.txt`` (the draw; ``i`` of ``img_<i>_*`` indexes it),
``effect_name_list.txt``, ``non_effect_name_list.txt``, ``img_<i>_effect/npy_files/*.npy`` for every
effective image, and ``img_<i>_non_effect/npy_files/*.npy`` (what was computed before it was dropped;
the original code kept that folder too, without arrays), plus ``img_<i>_*/fit.json`` and ``run.json``.
An image folder is written under a temporary name and renamed, so ``--resume`` never recomputes a
finished image and redoes a half-written one.  Runs under ``torchrun`` (images sharded over ranks).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torchvision import transforms as T
from tqdm import tqdm

from function.atomic import atomic_dir
from function.checkpoint import (check_fits, check_recorded_arch, list_checkpoints, load_checkpoint, num_classes_of,
                                 state_dict_of)
from function.cli import Parser, UserError, existing_dir, finite_float, positive_float, positive_int, run
from function.datasets import MaskedImageFolder
from function.masks import central_square, mask_to_grid
from function.rundir import RunRecord, check_out_apart, prepare_out, read_run_json, setting_diffs
from function.runtime import all_ok, cleanup_distributed, derive_seed, init_distributed, set_deterministic
from function.schedule import effective_rule_start
from function.sigma import (EFFECTIVE, NON_EFFECTIVE, PENDING, SigmaConfig, SigmaFitter, draw_order,
                            entropy_gap, name_lists, next_round)
from function.sigma_layout import (EFFECT_LIST, FIT_JSON, FULL_LIST, NON_EFFECT_LIST, finished_images,
                                   image_folder, read_names, write_names)
from function.stage import arch_or_error
from function.transforms import eval_transform
from models import LAYERS, MODELS, build_model, feature_fn

log = logging.getLogger("kdq")

FAMILY_LAMBDA = {"vgg": 7.0, "alexnet": 7.0, "resnet": 6.0}
# settings that change the numbers in the files: a resumed run must keep them
RESULT_SETTINGS = ("arch", "layer", "split", "grid", "samples", "steps", "break_steps", "lr", "sigma0",
                   "target_entropy", "lam", "seed", "foreground", "amp", "effective_rule", "effective_start",
                   "uneven_grid", "pixel_input")
STATE_CACHE_BYTES = 1 << 30  # keep every checkpoint's weights in memory when they total less


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("the net")
    src.add_argument("--checkpoint_root", "--checkpoint-root", dest="checkpoint_root", type=Path, required=True,
                     help="training run folder holding <e>.pth.tar checkpoints (train_net or distillation)")
    src.add_argument("--arch", required=True, help=f"architecture: {', '.join(MODELS)}")
    src.add_argument("--layer", required=True, choices=LAYERS, help="layer whose feature h = ReLU(layer(x)) is kept")
    src.add_argument("--checkpoints", nargs="+", type=int, default=None, metavar="E",
                     help="epochs to fit (default: every checkpoint in the run), stored oldest first")
    d = p.add_argument_group("images")
    d.add_argument("--data", type=Path, required=True, help="dataset root (<root>/<split>/<class>/<image>)")
    d.add_argument("--split", default="train", help="split to draw images from")
    d.add_argument("--foreground", choices=("masks", "central"), default="masks",
                   help="foreground cells: the dataset's masks, or the central square [g/6, 5g/6) when the "
                        "data has no masks (SPEC §2, ILSVRC without boxes)")
    d.add_argument("--pixel-input", action="store_true",
                   help="feed [0, 1] pixels without the ImageNet normalisation, as the original train_sigma.py "
                        "did (SPEC §2 and the training stages use normalised inputs)")
    d.add_argument("--pic-num", type=positive_int, default=500, help="images drawn (seeded) from the split")
    d.add_argument("--effect-num", type=positive_int, default=50, help="stop once this many effective images exist")
    d.add_argument("--effective-rule", choices=("on", "off"), default="on",
                   help="off: keep every image with σ_f² > 0, skipping the fg/bg entropy rule (to look at all "
                        "drawn images; not SPEC)")
    d.add_argument("--effective-start", type=int, default=None, metavar="E",
                   help="first epoch at which the fg/bg rule applies (default: epoch 40 of 150 scaled to the "
                        "run's length)")
    f = p.add_argument_group("the fit (SPEC §2 defaults)")
    f.add_argument("--grid", type=positive_int, default=16, help="σ is grid×grid cells; must divide the input size")
    f.add_argument("--uneven-grid", action="store_true",
                   help="allow a grid that does not divide the input size (uneven cells, e.g. 227 px AlexNet)")
    f.add_argument("--samples", type=positive_int, default=96, help="noise samples per step (and for σ_f²)")
    f.add_argument("--steps", type=positive_int, default=80, help="SGD steps T")
    f.add_argument("--break-steps", type=int, default=20,
                   help="T_break: after step T-T_break-1 stop if the target entropy was exceeded, else λ×1.5")
    f.add_argument("--lr", type=positive_float, default=1e-4, help="SGD learning rate on σ")
    f.add_argument("--sigma0", type=positive_float, default=0.01, help="initial σ and noise scale of σ_f²")
    f.add_argument("--target-entropy", type=finite_float, default=-2.8, help="H*: σ* is the step whose H̄ is nearest")
    f.add_argument("--lambda", dest="lam", type=positive_float, default=None,
                   help="entropy weight λ (default: 7 for VGG/AlexNet, 6 for ResNet)")
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
    o.add_argument("--seed", type=int, default=0, help="seed of the draw and of every image's noise")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun sets the local GPU)")
    o.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (slower on CUDA): two runs write byte-identical files")
    o.add_argument("--resume", action="store_true", help="continue the run in --out (finished images are kept)")
    o.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


# ---------------------------------------------------------------------------------------------
# validation (nothing is written before it passes)
# ---------------------------------------------------------------------------------------------
class Plan:
    """Everything main needs, checked: the checkpoints, the dataset, the draw and the fit settings."""

    def __init__(self, args: argparse.Namespace):
        self.info = arch_or_error(args.arch)
        size = self.info.input_size
        if args.grid > size:
            raise UserError(f"--grid {args.grid} is larger than the input size {size} of {args.arch}")
        if size % args.grid and not args.uneven_grid:
            divisors = [g for g in range(2, 33) if size % g == 0]
            raise UserError(f"--grid {args.grid} does not divide the input size {size} of {args.arch} "
                            f"(divisors: {', '.join(map(str, divisors)) or 'none ≤ 32'}; --uneven-grid allows it)")
        if args.deterministic and args.cudnn_benchmark:
            raise UserError("--deterministic and --cudnn-benchmark exclude each other (autotuning picks "
                            "algorithms by timing)")
        if not 0 <= args.break_steps < args.steps:
            raise UserError(f"--break-steps must be in 0..{args.steps - 1} (below --steps), got {args.break_steps}")
        self.lam = args.lam if args.lam is not None else FAMILY_LAMBDA[self.info.family]
        self.config = SigmaConfig(grid=args.grid, samples=args.samples, steps=args.steps,
                                  break_steps=args.break_steps, lr=args.lr, sigma0=args.sigma0,
                                  target_entropy=args.target_entropy, lam=self.lam,
                                  sample_chunk=args.sample_chunk, amp=args.amp, channels_last=args.channels_last,
                                  compile=args.compile)
        self._checkpoints(args)
        transform = (T.Compose([T.Resize((size, size)), T.ToTensor()]) if args.pixel_input
                     else eval_transform(size))
        self.dataset = MaskedImageFolder(args.data, args.split, transform=transform,
                                         require_masks=args.foreground == "masks")
        self.draw = draw_order(len(self.dataset), args.pic_num, args.seed)
        self.names = [self.dataset.names[i] for i in self.draw]

    def _checkpoints(self, args):
        root = existing_dir("--checkpoint_root", args.checkpoint_root)
        found = list_checkpoints(root)
        if not found:
            raise UserError(f"--checkpoint_root: {root} holds no <epoch>.pth.tar checkpoints")
        if args.checkpoints is None:
            epochs = list(found)
        else:
            epochs = sorted(set(args.checkpoints))
            missing = [e for e in epochs if e not in found]
            if missing:
                raise UserError(f"--checkpoints: epoch(s) {', '.join(map(str, missing))} not in {root} "
                                f"(it has {', '.join(map(str, found))})")
        self.epochs = epochs
        self.paths = [found[e] for e in epochs]
        settings = read_run_json(root).get("settings", {})
        total = settings.get("epochs")
        self.total_epochs = int(total) if isinstance(total, int) and total > 0 else max(found)
        self.rule_start = (args.effective_start if args.effective_start is not None
                           else effective_rule_start(self.total_epochs))
        fc3 = self.info.taps["fc3"].weight
        self.model, self.needed = None, None
        states, cached = {}, 0
        for e, path in zip(epochs, self.paths):
            ckpt = load_checkpoint(path, "--checkpoint_root")
            check_recorded_arch(ckpt, args.arch, f"--checkpoint_root: {path}")
            try:
                sd = state_dict_of(ckpt)
            except ValueError:
                raise UserError(f"--checkpoint_root: {path} is not a model checkpoint (no state_dict)") from None
            if fc3 not in sd:
                raise UserError(f"--checkpoint_root: {path} does not fit --arch {args.arch} (no {fc3})")
            if self.model is None:
                self.num_classes = num_classes_of(sd, fc3)
                self.model = build_model(args.arch, self.num_classes)
                self.needed = truncated_keys(self.model, args.arch, args.layer)
            check_fits(self.model, sd, args.arch, f"--checkpoint_root: {path}")
            states[e] = {k: sd[k] for k in self.needed}  # the layers above --layer are never run
            cached += sum(t.numel() * t.element_size() for t in states[e].values())
        self.states = states if cached <= STATE_CACHE_BYTES else None

    def state(self, epoch: int) -> dict[str, torch.Tensor]:
        """The weights (up to --layer) of checkpoint ``epoch``, for ``load_state_dict(strict=False)``."""
        if self.states is not None:
            return self.states[epoch]
        sd = state_dict_of(load_checkpoint(self.paths[self.epochs.index(epoch)], "--checkpoint_root"))
        return {k: sd[k] for k in self.needed}


def truncated_keys(model: torch.nn.Module, arch: str, layer: str) -> list[str]:
    """state_dict keys of ``model`` that the truncated forward at ``layer`` uses (shared tensors)."""
    used = {id(t) for t in feature_fn(model, arch, layer).state_dict(keep_vars=True).values()}
    return [k for k, t in model.state_dict(keep_vars=True).items() if id(t) in used]


def check_resumable(args, plan: Plan) -> None:
    """A resumed run must have been made by this stage with the same result-defining settings."""
    previous = read_run_json(args.out)  # prepare_out has checked that it is a train_sigma run
    diffs = setting_diffs(previous, args, (*RESULT_SETTINGS, "checkpoint_root", "data"))
    if previous.get("checkpoints") not in (None, plan.epochs):
        diffs.append(f"checkpoints: {previous.get('checkpoints')} → {plan.epochs}")
    if diffs:
        raise UserError(f"--resume: {args.out} was made with other settings ({'; '.join(diffs)})")
    names = read_names(args.out / FULL_LIST)
    common = min(len(names), len(plan.names))
    if names[:common] != plan.names[:common]:
        raise UserError(f"--resume: the draw of {args.out} differs from this one (other --data or --split?)")


# ---------------------------------------------------------------------------------------------
# fitting one batch of images over all checkpoints
# ---------------------------------------------------------------------------------------------
class ImageRecord:
    """The SPEC §4 arrays of one image while its checkpoints are fitted (last to first)."""

    def __init__(self, pos: int, index: int, name: str, fg: np.ndarray, K: int, T: int, g: int):
        self.pos, self.index, self.name, self.fg = pos, index, name, fg
        self.best_sigma = np.zeros((K, 1, g, g), dtype=np.float64)  # unfitted checkpoints stay 0 (≤ 0: no fit)
        self.entropy = np.full((K, 1, T), np.nan)  # steps (and checkpoints) not run are NaN
        self.feature_loss = np.full((K, 1, T), np.nan)
        self.penalty_loss = np.full((K, 1, T), np.nan)
        self.sigma_f = np.full((K, 1), np.nan)
        self.fits: dict[int, dict] = {}
        self.effective, self.reason = True, None

    def store(self, k: int, epoch: int, fit, gap: float) -> None:
        self.best_sigma[k, 0] = fit.sigma
        self.entropy[k, 0], self.feature_loss[k, 0] = fit.entropy, fit.feature_loss
        self.penalty_loss[k, 0], self.sigma_f[k, 0] = fit.penalty_loss, fit.sigma_f2
        self.fits[epoch] = {"best_step": fit.best_step, "steps_run": fit.steps_run,
                            "final_lambda": fit.final_lambda, "sigma_f2": fit.sigma_f2,
                            "bg_minus_fg_entropy": None if math.isnan(gap) else gap}

    def drop(self, reason: str) -> None:
        self.effective, self.reason = False, reason

    def write(self, out: Path, epochs: list[int]) -> None:
        """Write ``img_<pos>_{effect,non_effect}/`` atomically (temporary folder, then rename)."""
        with atomic_dir(image_folder(out, self.pos, self.effective)) as tmp:
            npy = tmp / "npy_files"
            npy.mkdir()
            for name, arr in (("best_sigma_entropy", self.best_sigma), ("entropy", self.entropy),
                              ("feature_loss", self.feature_loss), ("penalty_loss", self.penalty_loss),
                              ("sigma_f_matrix", self.sigma_f)):
                with open(npy / f"{name}.npy", "wb") as fh:  # the folder's rename is the atomic step
                    np.save(fh, arr, allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
            info = {"name": self.name, "dataset_index": self.index, "effective": self.effective,
                    "reason": self.reason, "checkpoints": epochs,
                    "fits": {str(e): v for e, v in sorted(self.fits.items())}}
            (tmp / FIT_JSON).write_text(json.dumps(info, indent=2) + "\n")


def foreground_grid(plan: Plan, index: int, grid: int, foreground: str) -> np.ndarray:
    if foreground == "central":
        return central_square(grid)
    return mask_to_grid(plan.dataset.mask(index), plan.info.input_size, grid)


def fit_batch(args, plan: Plan, fitter: SigmaFitter, model: torch.nn.Module, positions: list[int],
              show: bool, stats: dict) -> list[ImageRecord]:
    """Fit every checkpoint (last to first) for the images at ``positions`` of the draw."""
    cfg, K = plan.config, len(plan.epochs)
    records = [ImageRecord(p, plan.draw[p], plan.names[p],
                           foreground_grid(plan, plan.draw[p], cfg.grid, args.foreground), K, cfg.steps, cfg.grid)
               for p in positions]
    images = torch.stack([plan.dataset[plan.draw[p]][0] for p in positions])
    alive = list(range(len(records)))
    bar = tqdm(total=K, desc="checkpoints", leave=False, disable=not show, dynamic_ncols=True)
    for k in reversed(range(K)):
        if not alive:
            break
        epoch = plan.epochs[k]
        bar.set_postfix_str(f"epoch {epoch}, {len(alive)} image(s)")
        model.load_state_dict(plan.state(epoch), strict=False)  # only the weights up to --layer
        seeds = [derive_seed(args.seed, records[j].index, epoch) for j in alive]
        start = time.perf_counter()
        fits = fit_or_error(fitter, images[alive], seeds)
        stats["fit_seconds"] += time.perf_counter() - start
        stats["fits"] += len(alive)
        still = []
        for j, fit in zip(alive, fits):
            rec = records[j]
            gap = entropy_gap(fit.sigma, rec.fg) if not fit.failed else float("nan")
            rec.store(k, epoch, fit, gap)
            if not (math.isfinite(fit.sigma_f2) and fit.sigma_f2 > 0):
                rec.drop(f"sigma_f2 = {fit.sigma_f2} at epoch {epoch}")
            elif args.effective_rule == "on" and epoch >= plan.rule_start and not (gap >= 0):
                rec.drop(f"background entropy below foreground at epoch {epoch} (gap {gap:.4g})")
            else:
                still.append(j)
        alive = still
        bar.update()
    bar.close()
    return records


def fit_or_error(fitter: SigmaFitter, images: torch.Tensor, seeds: list[int]):
    """``fitter.fit``, with a torch.compile failure (no C++ compiler, an unsupported op) as one line."""
    if not fitter.cfg.compile:
        return fitter.fit(images, seeds)
    try:
        return fitter.fit(images, seeds)
    except torch._dynamo.exc.TorchDynamoException as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--compile: torch.compile failed ({reason}); run without --compile") from None


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def write_lists(out: Path, names: list[str], status: list[int], effect_num: int) -> tuple[int, int, bool]:
    effect, non_effect, done = name_lists(status, effect_num)
    write_names(out / EFFECT_LIST, [names[p] for p in effect])
    write_names(out / NON_EFFECT_LIST, [names[p] for p in non_effect])
    return len(effect), len(non_effect), done


def main(args: argparse.Namespace) -> None:
    check_out_apart(args.out, args)
    plan = Plan(args)  # every check that needs no writing
    args.lam = plan.lam  # recorded and compared on --resume as the value used, not "default"
    ctx, device = init_distributed(args.device)
    error = None
    if ctx.is_main:
        try:
            resume = prepare_out(args.out, args.resume, args.overwrite, "train_sigma")
            if resume:
                check_resumable(args, plan)
        except UserError as exc:
            error = exc
    if not all_ok(error is None, device):
        raise error or UserError("rank 0 refused --out")
    resume = args.resume and (args.out / FULL_LIST).is_file()
    out = args.out
    record = RunRecord(out, "train_sigma", args, {"world_size": ctx.world_size})
    record.update(checkpoints=plan.epochs, total_epochs=plan.total_epochs,
                  effective_rule_start=plan.rule_start if args.effective_rule == "on" else None,
                  num_classes=plan.num_classes, input_size=plan.info.input_size, candidates=len(plan.names))
    record.data["lambda"] = plan.lam
    if ctx.is_main:  # run.json first: a folder holding sigma files always says what made them
        record.save("running")
        write_names(out / FULL_LIST, plan.names)
    all_ok(True, device)  # barrier: the folder is ready

    set_deterministic(args.deterministic)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.amp and device.type != "cuda":
        log.warning("--amp on %s uses its autocast (%s); it is meant for CUDA", device.type, args.amp)
    model = plan.model.to(device).eval().requires_grad_(False)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    try:
        fitter = SigmaFitter(feature_fn(model, args.arch, args.layer).eval(), plan.config, device)
    except RuntimeError as exc:  # only torch.compile raises here: it refuses some Python builds
        raise UserError(f"--compile: {exc}; run without --compile") from None

    done_before = finished_images(out)
    status = [PENDING] * len(plan.names)
    for pos, eff in done_before.items():
        if pos < len(status):
            status[pos] = EFFECTIVE if eff else NON_EFFECTIVE
    stats = {"fits": 0, "fit_seconds": 0.0}
    show = ctx.is_main and args.progress
    bar = tqdm(total=len(status), desc="images", disable=not show, dynamic_ncols=True,
               initial=sum(s != PENDING for s in status))
    started = time.time()
    while True:
        effect, non_effect, finished = name_lists(status, args.effect_num)
        bar.set_postfix(effective=len(effect), non_effective=len(non_effect))
        if finished:
            break
        mine = next_round(status, args.batch_images, ctx.world_size)[ctx.rank]
        records = fit_batch(args, plan, fitter, model, mine, show, stats) if mine else []
        for rec in records:
            rec.write(out, plan.epochs)
        update = torch.zeros(len(status), dtype=torch.int32, device=device)
        for rec in records:
            update[rec.pos] = EFFECTIVE if rec.effective else NON_EFFECTIVE
        if dist.is_initialized():
            dist.all_reduce(update)
        new = update.cpu().tolist()
        resolved = 0
        for pos, st in enumerate(new):
            if st != PENDING and status[pos] == PENDING:
                status[pos], resolved = st, resolved + 1
        bar.update(resolved)
        if ctx.is_main:
            write_lists(out, plan.names, status, args.effect_num)
    bar.close()

    fit_totals = torch.tensor([stats["fits"], stats["fit_seconds"]], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(fit_totals)
    fits, fit_seconds = int(fit_totals[0].item()), float(fit_totals[1].item())
    wall = time.time() - started  # the fitting loop, all ranks done (bench/sigma_scaling.py reads it)
    if ctx.is_main:
        n_eff, n_non, _ = write_lists(out, plan.names, status, args.effect_num)
        processed = sum(s != PENDING for s in status)
        record.update(effective=n_eff, non_effective=n_non, processed=processed,
                      fits_this_session=fits,
                      seconds_per_fit=round(fit_seconds / fits, 4) if fits else None,
                      loop_wall_s=round(wall, 3),
                      sample_chunk_used=fitter.chunk, resumed=resume)
        record.save("complete")
        per_fit = f", {fit_seconds / fits:.2f} s/fit" if fits else ""
        print(f"sigma: {n_eff} effective, {n_non} non-effective of {processed} processed images "
              f"({len(plan.names)} drawn; {len(plan.epochs)} checkpoints, {fits} fits in {wall:.0f} s{per_fit}) "
              f"-> {out}", file=sys.stdout)
    cleanup_distributed()


if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
