"""A sigma run (stage 3): fit one σ map per (image, checkpoint) of a training run and write docs/method.md §4.

* :func:`plan_run` checks and reads everything a run needs — the checkpoints (their weights up to the
  layer), the dataset, the draw, the fit settings — and writes nothing.
* :func:`fit_images` fits a batch of images at every checkpoint, last to first, applying the
  effective-sample rule (:mod:`kdq.function.sigma.effective`) as it goes.
* :func:`run_images` hands batches to the ranks (:mod:`kdq.function.sigma.selection`), writes each
  finished image folder and keeps the name lists up to date, until ``effect_num`` effective images exist
  or the draw is used up.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kdq.function.archs import arch_from, check_input_size, probe_input
from kdq.function.checks import CheckError, check_grid
from kdq.function.cli import UserError, env_rank, existing_dir
from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.layout import dataset_kind
from kdq.function.data.masks import Foreground, resolve_foreground
from kdq.function.data.transforms import eval_transform
from kdq.function.io.checkpoint import (check_fits, check_recorded_arch, list_checkpoints, load_checkpoint,
                                        num_classes_in, state_dict_of)
from kdq.function.io.rundir import proved, read_run_json, setting_diffs
from kdq.function.progress import progress
from kdq.function.runtime import Dist, derive_seed, physical_memory, startup_step
from kdq.function.sigma import layout
from kdq.function.sigma.effective import drop_reason, entropy_gap, rule_start
from kdq.function.sigma.config import SigmaConfig, SigmaRunConfig, check_fit_settings
from kdq.function.sigma.fit import SigmaFit, SigmaFitter
from kdq.function.sigma.unit_run import UnitSource, unit_batch, unit_feature
from kdq.function.sigma.selection import EFFECTIVE, NON_EFFECTIVE, PENDING, draw_order, name_lists, next_round
from kdq.function.train.schedules import paper_list
from kdq.function.train.stage import lost_files
from kdq.models import ArchInfo, state_keys_up_to, truncated
from kdq.models.external import taps_text


STATE_CACHE_BYTES = 1 << 30  # keep every checkpoint's weights in memory when they total less
ZERO_FEATURE_SHARE = 0.5  # σ_f² = 0 for more than this share of a checkpoint's fits: the tap is named as a trap

log = logging.getLogger(__name__)


@dataclass
class Checkpoints:
    """The checkpoints a run fits and their weights up to the layer (cached when small enough)."""
    epochs: list[int]
    paths: list[Path]
    total_epochs: int
    num_classes: int
    keys: list[str]  # state_dict keys the truncated forward uses
    cache: dict[int, dict[str, torch.Tensor]] | None

    def state(self, epoch: int) -> dict[str, torch.Tensor]:
        """The weights (up to the layer) of checkpoint ``epoch``, for ``load_state_dict(strict=False)``."""
        if self.cache is not None:
            return self.cache[epoch]
        sd = state_dict_of(load_checkpoint(self.paths[self.epochs.index(epoch)], "--checkpoint_root"))
        return {k: sd[k] for k in self.keys}


@dataclass
class SigmaPlan:
    """Everything a sigma run needs, checked: nothing of it has been written yet."""
    info: ArchInfo
    layer: str
    config: SigmaConfig
    checkpoints: Checkpoints
    model: nn.Module  # the net, holding the first checkpoint's weights; only the layers up to --layer matter
    dataset: MaskedImageFolder | UnitSource  # images, or tokens and points (kdq.function.sigma.unit_run)
    draw: list[int]  # dataset indices in draw order
    names: list[str]  # their names (full_name_list.txt)
    foreground: Foreground | None  # the image foreground rule; None for tokens and points (their flags)
    rule_start: int | None  # first epoch of the fg/bg rule; None when it is off

    @property
    def epochs(self) -> list[int]:
        return self.checkpoints.epochs

    @property
    def units(self) -> bool:
        """True for tokens and points: one σ per unit instead of a g×g grid."""
        return self.info.modality != "image"

    def resolved(self) -> dict:
        """Settings whose value this plan derived (recorded and compared on --resume as the values used)."""
        foreground = {"foreground": "flags"} if self.foreground is None else self.foreground.describe()
        return {"arch": self.info.name, "taps": taps_text(self.info.taps), "image_size": self.info.input_size,
                "lam": self.config.lam, "modality": self.info.modality, **foreground}


def plan_run(args: SigmaRunConfig) -> SigmaPlan:
    """Check and read the inputs of a sigma run (every problem is a UserError; nothing is written)."""
    root = existing_dir("--checkpoint_root", args.checkpoint_root)
    record = read_run_json(root)
    info = arch_from(args, record, source=f"--checkpoint_root {root}")
    if args.layer not in info.taps:
        raise UserError(f"--layer {args.layer}: {info.name} has no tap there (taps: {', '.join(info.taps) or 'none'})")
    size = info.input_size
    try:  # the rules SigmaConfig applies too, under the flags' names
        if info.modality == "image":
            check_grid("--grid", args.grid, size, info.name)
        check_fit_settings(vars(args), lambda name: "--" + name.replace("_", "-"))
    except CheckError as exc:
        raise UserError(str(exc)) from None
    if args.deterministic and args.cudnn_benchmark:
        raise UserError("--deterministic and --cudnn-benchmark exclude each other (autotuning picks "
                        "algorithms by timing)")
    config = args.fit(info.family)
    check_none_lost(root, record, args.checkpoints)
    checkpoints, model = read_checkpoints(args, info, (record.get("settings") or {}).get("epochs"))
    start = None
    if args.effective_rule == "on":
        start = args.effective_start if args.effective_start is not None else rule_start(checkpoints.total_epochs)
    if info.modality != "image":
        return _plan_units(args, info, config, checkpoints, model, start)
    foreground = resolve_foreground(args.foreground, args.missing_mask, dataset_kind(args.data), args.exact_masks,
                                    args.mask_pad)
    dataset = MaskedImageFolder(args.data, args.split, transform=eval_transform(size),
                                require_masks=foreground.source == "masks" and foreground.missing == "error")
    draw = draw_order(len(dataset), args.pic_num, args.pic_seed)
    check_fit_memory(min(args.batch_images, len(draw)), args.samples, args.steps, len(checkpoints.epochs), size)
    dataset.check_files(draw, masks=foreground.source == "masks", workers=min(8, os.cpu_count() or 1),
                        show_progress=args.progress and env_rank() == 0)  # before anything is written
    return SigmaPlan(info=info, layer=args.layer, config=config, checkpoints=checkpoints,
                     model=model, dataset=dataset, draw=draw, names=[dataset.names[i] for i in draw],
                     foreground=foreground, rule_start=start)


def _plan_units(args: SigmaRunConfig, info: ArchInfo, config: SigmaConfig, checkpoints: Checkpoints,
                model: nn.Module, start: int | None) -> SigmaPlan:
    """The rest of :func:`plan_run` for tokens and points: their split (checked as it is read), the draw."""
    from kdq.function.data.modality import resolve_modality

    resolve_modality(args.modality, args.data, info.modality, info.name)
    dataset = UnitSource(info.modality, args.data, args.split)
    if info.modality == "text":
        check_vocabulary(args, info, dataset.dataset)
    draw = draw_order(len(dataset), args.pic_num, args.pic_seed)
    return SigmaPlan(info=info, layer=args.layer, config=config, checkpoints=checkpoints, model=model,
                     dataset=dataset, draw=draw, names=[dataset.names[i] for i in draw], foreground=None,
                     rule_start=start)


def check_vocabulary(args: SigmaRunConfig, info: ArchInfo, dataset) -> None:
    """A text split the net can read: sequences no longer than it takes, and the vocabulary it was trained with
    (the training run's ``vocab_sha256``, where it records one; else at least no more words than it has ids)."""
    from kdq.function.data.modality import vocab_digest

    if dataset.max_length > info.input_size:
        raise UserError(f"--data: {args.data} holds sequences of up to {dataset.max_length} tokens; the net takes at "
                        f"most {info.input_size}")
    trained = (read_run_json(args.checkpoint_root).get("settings") or {}).get("vocab_sha256")
    if trained is not None and trained != vocab_digest(dataset.vocab):
        raise UserError(f"--data: {args.data}'s vocab.txt is not the vocabulary --checkpoint_root "
                        f"{args.checkpoint_root} was trained with (its words would get other ids)")
    size = info.options.get("vocab_size")
    if size is not None and len(dataset.vocab) > size:
        raise UserError(f"--data: {args.data}'s vocab.txt has {len(dataset.vocab)} words; the net has ids for {size}")


def fit_memory(batch: int, samples: int, steps: int, checkpoints: int, size: int) -> dict[str, int]:
    """Bytes a batch of ``batch`` images holds at once, by the flag that sets it: the noise of one step
    (``--samples``: batch × samples × 3 × S² float32) and the per-step arrays kept for every checkpoint
    (``--steps``: batch × checkpoints × steps × 3 float64)."""
    return {"--samples": batch * samples * 3 * size * size * 4, "--steps": batch * checkpoints * steps * 3 * 8}


def check_fit_memory(batch: int, samples: int, steps: int, checkpoints: int, size: int) -> None:
    """A fit whose arrays would exceed this machine's memory is refused up front, naming the flag (and
    ``--batch-images``, which multiplies both)."""
    total = physical_memory()
    if total is None:
        return
    for flag, need in fit_memory(batch, samples, steps, checkpoints, size).items():
        if need > total:
            raise UserError(f"{flag} {samples if flag == '--samples' else steps}: a batch of {batch} image(s) "
                            f"(--batch-images) would hold {need / 2**30:.3g} GiB for it at once, more than this "
                            f"machine's {total / 2**30:.3g} GiB of memory")


def check_none_lost(root: Path, record: dict, chosen: list[int] | None) -> None:
    """Without ``--checkpoints``, a complete training run must hold every checkpoint its run.json records: the
    stage would otherwise fit the ones that remain as if they were the run's schedule."""
    if chosen is not None or record.get("status") != "complete":
        return
    lost = [p for p in lost_files(root, record) if p.name != record.get("final_checkpoint")]
    if lost:
        raise UserError(f"--checkpoint_root: {root} records checkpoint(s) that are missing: "
                        f"{', '.join(str(p) for p in lost)}; restore them, or pass --checkpoints to fit those present")


def read_checkpoints(args: SigmaRunConfig, info: ArchInfo,
                     total: int | None = None) -> tuple[Checkpoints, nn.Module]:
    """The checkpoints of ``--checkpoint_root`` to fit, each checked against the architecture, with their weights
    up to ``--layer``; and the model built for them.  ``total``: the epochs the training run recorded (its
    checkpoints' last epoch when None)."""
    root = args.checkpoint_root
    found = list_checkpoints(root)
    if not found:
        raise UserError(f"--checkpoint_root: {root} holds no <epoch>.pth.tar checkpoints")
    if args.checkpoints is None:
        epochs = default_epochs(found)
    else:
        epochs = sorted(set(args.checkpoints))
        missing = [e for e in epochs if e not in found]
        if missing:
            raise UserError(f"--checkpoints: epoch(s) {', '.join(map(str, missing))} not in {root} "
                            f"(it has {', '.join(map(str, found))})")
    total_epochs = int(total) if isinstance(total, int) and total > 0 else max(found)
    fc3 = info.taps["fc3"].weight if "fc3" in info.taps else None
    model, keys, cache, cached = None, [], {}, 0
    for e in epochs:
        path = found[e]
        ckpt = load_checkpoint(path, "--checkpoint_root")
        check_recorded_arch(ckpt, info.name, f"--checkpoint_root: {path}")
        try:
            sd = state_dict_of(ckpt)
        except ValueError:
            raise UserError(f"--checkpoint_root: {path} is not a model checkpoint (no state_dict)") from None
        if model is None:
            num_classes = classes_of(ckpt, sd, fc3, path, info.name)
            check_input_size(info, num_classes)
            with startup_step("building the model"), torch.random.fork_rng(devices=[]):
                model = info.build(num_classes)
                keys = state_keys_up_to(model, info.taps[args.layer], info.input_size, probe_input(info))
        check_fits(model, sd, info.name, f"--checkpoint_root: {path}")
        cache[e] = {k: sd[k] for k in keys}  # the layers above --layer are never run
        cached += sum(t.numel() * t.element_size() for t in cache[e].values())
    checkpoints = Checkpoints(epochs=epochs, paths=[found[e] for e in epochs], total_epochs=total_epochs,
                              num_classes=num_classes, keys=keys, cache=cache if cached <= STATE_CACHE_BYTES else None)
    return checkpoints, model


def classes_of(ckpt: dict, sd: dict[str, torch.Tensor], fc3: str | None, path: Path, arch: str) -> int:
    """The number of classes a checkpoint's net was built for: its ``num_classes`` (kdq), else the rows of its
    fc3 weight (the original code's checkpoints)."""
    found = num_classes_in(ckpt, sd, fc3)
    if found is not None:
        return found
    if fc3 is None:
        raise UserError(f"--checkpoint_root: {path} does not record its number of classes and {arch} has no fc3 "
                        "tap to read it from")
    raise UserError(f"--checkpoint_root: {path} does not fit --arch {arch} (no {fc3})")


def default_epochs(found: dict[int, Path]) -> list[int]:
    """The checkpoints fitted without ``--checkpoints``: the original's schedule for the run's last checkpoint
    (:func:`~kdq.function.train.schedules.paper_list`: ``0 2 5 … 150``, and ``170 … 400`` past 150 epochs) when the
    run holds every epoch of it, else every one found."""
    schedule, _ = paper_list(max(found))
    return list(schedule) if all(e in found for e in schedule) else list(found)


def check_resumable(out: Path, args: SigmaRunConfig, plan: SigmaPlan) -> None:
    """A resumed run must have been made by this stage with the same result-defining settings and draw."""
    previous = read_run_json(out)  # prepare_out has checked that it is a train_sigma run
    diffs = setting_diffs(previous, args, type(args).result_settings(), plan.resolved())
    if previous.get("checkpoints") not in (None, plan.epochs):
        diffs.append(f"checkpoints: {previous.get('checkpoints')} → {plan.epochs}")
    if diffs:
        raise UserError(f"--resume: {out} was made with other settings ({'; '.join(diffs)})")
    names = layout.read_names(out / layout.FULL_LIST)
    common = min(len(names), len(plan.names))
    if names[:common] != plan.names[:common]:
        raise UserError(f"--resume: the draw of {out} differs from this one (other --data, --split, --pic-num "
                        "or --pic-seed?)")


# ---------------------------------------------------------------------------------------------
# one batch of images over all checkpoints
# ---------------------------------------------------------------------------------------------
@dataclass
class ImageRecord:
    """The docs/method.md §4 arrays of one image while its checkpoints are fitted (last to first)."""
    pos: int  # position in the draw: the i of img_<i>_*
    index: int  # dataset index
    name: str
    fg: np.ndarray  # (g, g) foreground cells (tokens, points: (1, U), its real units)
    arrays: dict[str, np.ndarray]
    fits: dict[int, dict] = field(default_factory=dict)
    reason: str | None = None  # why it is non-effective; None while effective

    @classmethod
    def empty(cls, pos: int, index: int, name: str, fg: np.ndarray, K: int, T: int,
              shape: tuple[int, int]) -> "ImageRecord":
        """``shape``: the map's, ``(g, g)`` cells or ``(1, U)`` units."""
        arrays = {"best_sigma_entropy": np.zeros((K, 1, *shape), dtype=np.float64),  # unfitted: 0 (≤ 0: no fit)
                  "entropy": np.full((K, 1, T), np.nan),  # steps (and checkpoints) not run are NaN
                  "feature_loss": np.full((K, 1, T), np.nan), "penalty_loss": np.full((K, 1, T), np.nan),
                  "sigma_f_matrix": np.full((K, 1), np.nan)}
        return cls(pos, index, name, fg, arrays)

    @property
    def effective(self) -> bool:
        return self.reason is None

    def store(self, k: int, epoch: int, fit: SigmaFit, gap: float, sigma: np.ndarray) -> None:
        """Checkpoint ``k``'s fit; ``sigma``: its map as stored (``fit.sigma``; units: the real units' σ as 1×U)."""
        a = self.arrays
        a["best_sigma_entropy"][k, 0] = sigma
        a["entropy"][k, 0], a["feature_loss"][k, 0] = fit.entropy, fit.feature_loss
        a["penalty_loss"][k, 0], a["sigma_f_matrix"][k, 0] = fit.penalty_loss, fit.sigma_f2
        self.fits[epoch] = {"best_step": fit.best_step, "steps_run": fit.steps_run,
                            "final_lambda": fit.final_lambda, "sigma_f2": fit.sigma_f2,
                            "bg_minus_fg_entropy": None if math.isnan(gap) else gap}

    def write(self, out: Path, epochs: list[int]) -> None:
        info = {"name": self.name, "dataset_index": self.index, "effective": self.effective,
                "reason": self.reason, "checkpoints": epochs,
                "fits": {str(e): v for e, v in sorted(self.fits.items())}}
        odd = [f"fits.{e}.{k} is {v}" for e, fit in sorted(self.fits.items()) for k, v in fit.items()
               if isinstance(v, float) and not math.isfinite(v)]
        if odd:  # fit.json is strict JSON: such a number is written as null
            info["notes"] = [f"{', '.join(odd)}: written as null (not a JSON number)"]
        layout.write_image(out, self.pos, self.effective, self.arrays, info)


def foreground_grid(plan: SigmaPlan, index: int) -> np.ndarray:
    """The (g, g) foreground cells of dataset image ``index`` that the effective rule compares (tokens and points:
    the ``(U,)`` flags of its real units)."""
    if plan.units:  # as a 1×U grid, the shape of the map it is stored with
        return plan.dataset.foreground(index)[None]
    values = None if plan.foreground.source == "central" else plan.dataset.mask_values(index)
    return plan.foreground.cells(values, plan.info.input_size, plan.config.grid)[0]


def fit_images(plan: SigmaPlan, fitter: SigmaFitter, model: nn.Module, positions: list[int], seed: int,
               show: bool, stats: dict) -> list[ImageRecord]:
    """Fit every checkpoint (last to first) for the images at ``positions`` of the draw."""
    cfg, K = plan.config, len(plan.epochs)
    fgs = [foreground_grid(plan, plan.draw[p]) for p in positions]
    records = [ImageRecord.empty(p, plan.draw[p], plan.names[p], fg, K, cfg.steps, fg.shape)
               for p, fg in zip(positions, fgs)]
    if plan.units:
        images, valid = plan.dataset.inputs([plan.draw[p] for p in positions])
    else:
        images = torch.stack([plan.dataset[plan.draw[p]][0] for p in positions])
    alive = list(range(len(records)))
    bar = progress(total=K, desc="checkpoints", leave=False, enabled=show)
    for k in reversed(range(K)):
        if not alive:
            break
        epoch = plan.epochs[k]
        bar.set_postfix_str(f"epoch {epoch}, {len(alive)} image(s)")
        model.load_state_dict(plan.checkpoints.state(epoch), strict=False)  # only the weights up to --layer
        seeds = [derive_seed(seed, records[j].index, epoch) for j in alive]
        start = time.perf_counter()
        if plan.units:  # a token's clean embedding is this checkpoint's
            values, units = unit_batch(model, plan.info, images[alive], valid[alive], fitter.device)
            fits = fit_or_error(fitter, values, seeds, units)
        else:
            fits = fit_or_error(fitter, images[alive], seeds)
        stats["fit_seconds"] += time.perf_counter() - start
        stats["fits"] += len(alive)
        stats["fitted"][k] += len(alive)
        still = []
        for j, fit in zip(alive, fits):
            stats["zero_f2"][k] += fit.sigma_f2 == 0.0
            rec = records[j]
            # σ* over the real units (tokens: without the padding), in the shape of the map: g×g or 1×U
            sigma = (fit.sigma if fit.valid is None else fit.sigma[fit.valid]).reshape(rec.fg.shape)
            gap = entropy_gap(sigma, rec.fg) if not fit.failed else float("nan")
            rec.store(k, epoch, fit, gap, sigma)
            rec.reason = drop_reason(fit.sigma_f2, gap, epoch, plan.rule_start)
            if rec.effective:
                still.append(j)
        alive = still
        bar.update()
    bar.close()
    return records


def fit_or_error(fitter: SigmaFitter, images: torch.Tensor, seeds: list[int], units=None) -> list[SigmaFit]:
    """``fitter.fit`` (``units``: tokens or points), with a torch.compile failure (no C++ compiler, an unsupported
    op) as one line."""
    if not fitter.cfg.compile:
        return fitter.fit(images, seeds, units=units)
    try:
        return fitter.fit(images, seeds, units=units)
    except Exception as exc:  # noqa: BLE001 - only torch.compile's own errors are turned into one line
        if type(exc).__module__.split(".")[:2] not in (["torch", "_dynamo"], ["torch", "_inductor"]):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--compile: torch.compile failed ({reason}); run without --compile") from None


def prepare_model(plan: SigmaPlan, device: torch.device) -> tuple[nn.Module, SigmaFitter]:
    """The net on ``device`` in eval mode without gradients, and the fitter of its truncated forward."""
    with startup_step(f"moving the model to {device}"):
        model = plan.model.to(device).eval().requires_grad_(False)
        if plan.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
    try:
        # torch.compile needs a traceable graph (fx); otherwise a hook stops the forward at the layer
        method = "fx" if plan.config.compile else "auto"
        feature = unit_feature(model, plan.info, plan.layer) if plan.units else \
            truncated(model, plan.info.taps[plan.layer], method)
        fitter = SigmaFitter(feature.eval(), plan.config, device)
    except RuntimeError as exc:  # only torch.compile raises here: it refuses some Python builds
        raise UserError(f"--compile: {exc}; run without --compile") from None
    return model, fitter


# ---------------------------------------------------------------------------------------------
# the run: rounds of batches over the ranks
# ---------------------------------------------------------------------------------------------
def write_lists(out: Path, names: list[str], status: list[int], effect_num: int) -> tuple[int, int, bool]:
    effect, non_effect, done = name_lists(status, effect_num)
    layout.write_names(out / layout.EFFECT_LIST, [names[p] for p in effect])
    layout.write_names(out / layout.NON_EFFECT_LIST, [names[p] for p in non_effect])
    return len(effect), len(non_effect), done


@dataclass
class RunSummary:
    effective: int
    non_effective: int
    processed: int
    fits: int  # fits of this session, all ranks
    fit_seconds: float
    wall_s: float  # the fitting loop, all ranks done
    notes: list[str] = field(default_factory=list)  # traps met on the way (:func:`zero_feature_note`)


def run_images(plan: SigmaPlan, fitter: SigmaFitter, model: nn.Module, out: Path, ctx: Dist,
               device: torch.device, effect_num: int, batch_images: int, seed: int,
               show: bool) -> RunSummary:
    """Fit the draw in rounds (one batch per rank) until ``effect_num`` effective images are listed or the
    draw is used up; images already in ``out`` (a resumed run) are kept.  Rank 0 writes the name lists."""
    status = [PENDING] * len(plan.names)
    for pos, eff in layout.finished_images(out).items():
        if pos < len(status):
            status[pos] = EFFECTIVE if eff else NON_EFFECTIVE
    K = len(plan.epochs)
    stats = {"fits": 0, "fit_seconds": 0.0, "fitted": np.zeros(K, dtype=np.int64), "zero_f2": np.zeros(K, dtype=np.int64)}
    bar = progress(total=len(status), desc="images", enabled=show, initial=sum(s != PENDING for s in status))
    started = time.time()
    while True:
        effect, non_effect, finished = name_lists(status, effect_num)
        bar.set_postfix(effective=len(effect), non_effective=len(non_effect))
        if finished:
            break
        mine = next_round(status, batch_images, ctx.world_size)[ctx.rank]
        records = fit_images(plan, fitter, model, mine, seed, show, stats) if mine else []
        for rec in records:
            rec.write(out, plan.epochs)
        update = torch.zeros(len(status), dtype=torch.int32, device=device)
        for rec in records:
            update[rec.pos] = EFFECTIVE if rec.effective else NON_EFFECTIVE
        if dist.is_initialized():
            dist.all_reduce(update)
        resolved = 0
        for pos, st in enumerate(update.cpu().tolist()):
            if st != PENDING and status[pos] == PENDING:
                status[pos], resolved = st, resolved + 1
        bar.update(resolved)
        if ctx.is_main:
            write_lists(out, plan.names, status, effect_num)
            if resolved:
                proved(out)  # an image is finished: a run that --overwrite replaced may go
    bar.close()

    totals = torch.tensor([stats["fits"], stats["fit_seconds"], *stats["fitted"], *stats["zero_f2"]],
                          dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    counts = totals[2:].cpu().numpy().astype(np.int64).reshape(2, K)
    n_eff = n_non = 0
    notes = []
    if ctx.is_main:
        n_eff, n_non, _ = write_lists(out, plan.names, status, effect_num)
        note = zero_feature_note(plan, {e: (int(z), int(n)) for e, n, z in zip(plan.epochs, *counts)})
        if note:
            log.warning("%s", note)
            notes.append(note)
    return RunSummary(effective=n_eff, non_effective=n_non, processed=sum(s != PENDING for s in status),
                      fits=int(totals[0].item()), fit_seconds=float(totals[1].item()), wall_s=time.time() - started,
                      notes=notes)


def zero_feature_note(plan: SigmaPlan, counts: dict[int, tuple[int, int]]) -> str | None:
    """One line naming the trap when σ_f² = 0 for most fits (more than :data:`ZERO_FEATURE_SHARE`) at a checkpoint:
    the feature at the tap does not change with the input there, which makes those images non-effective.
    ``counts``: epoch → (fits with σ_f² = 0, fits).  None when no checkpoint has the trap."""
    hit = {e: (z, n) for e, (z, n) in counts.items() if n and z > ZERO_FEATURE_SHARE * n}
    if not hit:
        return None
    tap = plan.info.taps[plan.layer]
    shown = ", ".join(f"{e} ({z} of {n} fits)" for e, (z, n) in sorted(hit.items()))
    return (f"σ_f² = 0 for most images at epoch(s) {shown}: the feature at --layer {plan.layer} (node {tap.node}) "
            "does not change with the input there, so those images are non-effective; this happens when a "
            "BatchNorm initialised to zero sits right before the tap (timm's zero-initialised last BatchNorm of a "
            "residual block, torchvision's zero_init_residual) or a ReLU layer before it is dead; try another tap "
            "(--taps, e.g. the block's output: conv=layer4.0 rather than conv=layer4.0.bn2) or leave those "
            "checkpoints out (--checkpoints)")
