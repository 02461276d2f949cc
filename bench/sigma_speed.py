"""Speed of the σ fit (prints figures, asserts nothing about time).

    python bench/sigma_speed.py --checkpoint runs/teacher/15.pth.tar --arch vgg_tiny --layer conv

(a) a straightforward fit — one image at a time, the *whole* network run with a hook at the layer, its
    parameters requiring gradients, σ an ``nn.Parameter`` under ``torch.optim.SGD``, noise from the global
    RNG, a ``.item()`` per step for the log (how the original code works) — versus ``SigmaFitter``;
(b) ``SigmaFitter`` versus the floor: ``T·n`` forward+backward passes of the truncated net, with nothing
    else (``feature(x).sum().backward()`` on an input that requires grad);
(c) on CUDA (or with ``--sweep``): fits per second at B = 1, 8, 32 images fitted at once, with and without
    ``--amp`` (bf16), and B = 1 against the best B of each (a warm-up fit of each B first; CUDA synchronised
    around every timing);
(d) with ``--map-effect N``: how much ``--amp`` and ``--channels-last`` change the maps of N images;
(e) with ``--precision N``: fp32 against bf16 and bf16 + channels-last on N images fitted with the same noise
    (``--steps`` steps; a few for VGG-16): the whole fit's time per image (min of ``--repeats`` alternated runs) and
    fits/s, and how the maps agree with fp32's (per-image correlation of log σ*, σ* step, concept cells: a cell is a
    concept when H̄_bg − H > b, docs/method.md §3, H̄_bg over the N images, foregrounds from ``--data``'s masks or the
    central square without it).

Per-step times are the minimum over ``--repeats`` alternated short trials (``--trial-steps``), on one
checkpoint and device; then one full-length fit is timed.  Without ``--checkpoint`` a freshly initialised net is used.
With ``--compile`` the fits of (b), (c) and the full fit run ``torch.compile``'d (a warm-up fit compiles first).
``--csv FILE`` also writes every figure as one row (``bench/gpu_check.sh`` reads it for its summary table).
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdq.function.io.checkpoint import load_checkpoint, num_classes_of, state_dict_of
from kdq.function.cli import Parser, UserError, positive_int, run
from kdq.function.data.folder import MaskedImageFolder
from kdq.function.data.masks import Foreground, central_square
from kdq.function.metrics.config import MetricsConfig
from kdq.function.metrics.measures import background_baseline, concept_masks
from kdq.function.data.transforms import eval_transform
from kdq.function.runtime import resolve_device
from kdq.function.sigma.entropy import entropy_map, mean_entropy
from kdq.function.sigma.precision import cpu_has_bf16
from kdq.function.sigma.fit import SigmaConfig, SigmaFitter, select_step
from kdq.models import arch_info, build_model, feature_fn


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="a <e>.pth.tar of --arch (default: fresh weights)")
    p.add_argument("--arch", default="vgg_tiny", help="architecture of --checkpoint or the fresh net")
    p.add_argument("--layer", nargs="+", default=["conv"], help="layers to time")
    p.add_argument("--num-classes", type=positive_int, default=8, help="classes of a fresh net")
    p.add_argument("--samples", type=positive_int, default=SigmaConfig.samples, help="noise samples n per step")
    p.add_argument("--steps", type=positive_int, default=SigmaConfig.steps, help="SGD steps T of a full fit")
    p.add_argument("--break-steps", type=int, default=20, help="T_break of a full fit")
    p.add_argument("--grid", type=positive_int, default=SigmaConfig.grid, help="σ grid g (g×g cells)")
    p.add_argument("--lr", type=float, default=SigmaConfig.lr, help="SGD learning rate on σ")
    p.add_argument("--repeats", type=positive_int, default=4, help="alternated trials; the minimum is shown")
    p.add_argument("--trial-steps", type=positive_int, default=20, help="SGD steps per timing trial")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN pick the fastest conv algorithms (as the sigma stage's flag); the first trial of "
                        "each shape pays the search")
    p.add_argument("--csv", type=Path, default=None, metavar="FILE",
                   help="also write each figure as a row of FILE (layer, measure, amp, batch, value, unit, steps, "
                        "samples, chunk), flushed as it is measured")
    p.add_argument("--skip-naive", action="store_true", help="skip (a)")
    p.add_argument("--cuda-batches", type=positive_int, nargs="+", default=[1, 8, 32],
                   help="B for (c) (B = 1 is always run: the others are compared with it)")
    p.add_argument("--sweep", action="store_true", help="run (c) on a device other than CUDA too (slow on a CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fits of (b), (c) and the full fit")
    p.add_argument("--data", type=Path, default=None, help="dataset root: time and compare on its train images")
    p.add_argument("--map-effect", type=int, default=0, metavar="N",
                   help="(d) fit N random images with and without --amp / --channels-last and compare the maps")
    p.add_argument("--precision", type=int, default=0, metavar="N",
                   help="(e) fit N images in fp32, bf16 and bf16 + channels-last: time and map agreement")
    p.add_argument("--only-precision", action="store_true", help="run (e) alone (skip (a), (b) and the full fit)")
    return p


CSV_FIELDS = ("layer", "measure", "amp", "batch", "value", "unit", "steps", "samples", "chunk")


class Figures:
    """The figures as rows of a CSV file (``--csv``), each appended and flushed when it is measured, so a run cut
    short keeps what it measured; without a file, nothing."""

    def __init__(self, path: Path | None):
        self.path = path
        self.started = False

    def add(self, **row) -> None:
        if self.path is None:
            return
        with self.path.open("a" if self.started else "w", newline="") as fh:
            writer = csv.writer(fh)
            if not self.started:
                writer.writerow(CSV_FIELDS)
            writer.writerow([row.get(key, "") for key in CSV_FIELDS])
        self.started = True


def gpu_description(device: torch.device) -> str:
    """The GPU, its CUDA and cuDNN, and whether cuDNN may run fp32 convolutions in TF32 (torch's default)."""
    if device.type != "cuda":
        return ""
    return (f", {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
            f", TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, cuDNN benchmark "
            f"{'on' if torch.backends.cudnn.benchmark else 'off'}")


class NaiveFit:
    """The straightforward implementation: whole net, hook, parameters with gradients, one image."""

    def __init__(self, model: nn.Module, layer_module: nn.Module, cfg: SigmaConfig, size: int, device):
        self.model, self.cfg, self.size, self.device = model, cfg, size, device
        self.captured = None
        layer_module.register_forward_hook(lambda m, i, o: setattr(self, "captured", o))

    def h(self, x):
        self.model(x)  # the whole network; the hook keeps the layer's output
        return F.relu(self.captured)

    def fit(self, image: torch.Tensor) -> int:
        cfg, n = self.cfg, self.cfg.samples
        x = image[None].to(self.device)
        with torch.no_grad():
            clean = self.h(x)
            sigma_f = F.mse_loss(self.h(x + cfg.sigma0 * torch.randn(n, *x.shape[1:], device=self.device)),
                                 clean.expand(n, *clean.shape[1:]))
        sigma = nn.Parameter(torch.full((1, 1, cfg.grid, cfg.grid), cfg.sigma0, device=self.device))
        opt = torch.optim.SGD([sigma], lr=cfg.lr)
        lam, entropies, kept = cfg.lam, [], []
        for t in range(cfg.steps):
            with torch.no_grad():
                sigma.clamp_(cfg.sigma_min, cfg.sigma_max)
            kept.append(sigma.detach().cpu().clone())
            up = F.interpolate(sigma, size=self.size, mode="nearest")
            noisy = x + up * torch.randn(n, *x.shape[1:], device=self.device)
            h_bar = mean_entropy(sigma[0, 0])
            loss = F.mse_loss(self.h(noisy), clean.expand(n, *clean.shape[1:])) / sigma_f - lam * h_bar
            opt.zero_grad()
            loss.backward()
            opt.step()
            entropies.append(h_bar.item())
            if t == cfg.decision:
                if max(entropies) > cfg.target_entropy:
                    break
                lam *= cfg.lambda_factor
        select_step(entropies, cfg.target_entropy)
        return len(entropies)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_time(feature, x, steps: int, samples: int, device, chunk: int | None = None) -> float:
    """``steps`` forward+backward passes of the truncated net over ``samples`` inputs (in passes of
    ``chunk``), nothing else."""
    chunk = min(chunk or samples, samples)
    sizes = [min(chunk, samples - a) for a in range(0, samples, chunk)]
    inputs = [x.expand(c, *x.shape[1:]).clone().requires_grad_(True) for c in sizes]
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        for inp in inputs:
            feature(inp).sum().backward()
            inp.grad = None
    sync(device)
    return time.perf_counter() - start


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    figures = Figures(args.csv)
    info = arch_info(args.arch)
    size = info.input_size
    num_classes = args.num_classes
    sd = None
    if args.checkpoint is not None:
        sd = state_dict_of(load_checkpoint(args.checkpoint))
        num_classes = num_classes_of(sd, info.taps["fc3"].weight)
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes)
    if sd is not None:
        model.load_state_dict(sd)
    model.to(device).eval()
    x = images(1, size, device, args.data)
    print(f"device {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}, {args.arch} at "
          f"{size} px, n={args.samples}, T={args.steps}, grid {args.grid}, "
          f"weights: {args.checkpoint or 'fresh'}; per-step times: min of {args.repeats} alternated trials of "
          f"{min(args.trial_steps, args.steps)} steps{gpu_description(device)}")
    if args.precision:
        print(f"CPU bf16 units (kdq.function.sigma.precision.cpu_has_bf16): {cpu_has_bf16()}")
    for layer in args.layer:
        try:
            cfg = SigmaConfig(grid=args.grid, samples=args.samples, steps=args.steps, break_steps=args.break_steps,
                              lr=args.lr, compile=args.compile).resolved(info.family)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        trial = cfg.with_(steps=min(args.trial_steps, args.steps), break_steps=0)
        model.requires_grad_(False)
        feature = feature_fn(model, args.arch, layer).eval()
        if args.precision:
            precision_effect(feature, cfg, size, device, args.precision, layer, args.data, args.repeats, figures)
            if args.only_precision:
                continue
        fitter = SigmaFitter(feature, trial, device)
        naive_model = build_model(args.arch, num_classes).to(device).eval()
        naive_model.load_state_dict(model.state_dict())  # parameters keep requires_grad=True
        naive = NaiveFit(naive_model, naive_model.get_submodule(info.taps[layer].node), trial, size, device)
        chunk = fitter.chunk if fitter.chunk and fitter.chunk < args.samples else None
        best = {"naive": math.inf, "ours": math.inf, "floor": math.inf, "floor_chunked": math.inf}
        def run_naive():
            t, n_steps = timed(lambda: naive.fit(x[0]), device)
            best["naive"] = min(best["naive"], t / n_steps)

        def run_ours():
            t, fits = timed(lambda: fitter.fit(x, seeds=[0]), device)
            best["ours"] = min(best["ours"], t / fits[0].steps_run)

        def run_floor():
            best["floor"] = min(best["floor"], floor_time(feature, x, trial.steps, args.samples, device) / trial.steps)

        def run_floor_chunked():
            best["floor_chunked"] = min(best["floor_chunked"], floor_time(
                feature, x, trial.steps, args.samples, device, chunk) / trial.steps)

        order = ([] if args.skip_naive else [run_naive]) + [run_ours, run_floor] + (
            [run_floor_chunked] if chunk else [])
        for r in range(args.repeats):  # short trials, alternated, order rotated: robust to load and allocator state
            for fn in order[r % len(order):] + order[:r % len(order)]:
                fn()
        floor = min(best["floor"], best["floor_chunked"])
        chunked = f", in passes of {chunk} {best['floor_chunked'] * 1e3:.1f} ms" if chunk else ""
        print(f"[{layer}] per step: ours {best['ours'] * 1e3:.1f} ms (sample chunk {fitter.chunk or args.samples}), "
              f"floor {best['floor'] * 1e3:.1f} ms{chunked}"
              + ("" if args.skip_naive else f", straightforward {best['naive'] * 1e3:.1f} ms"))
        for measure in ("ours", "floor", "floor_chunked", "naive"):
            if math.isfinite(best[measure]):
                figures.add(layer=layer, measure=f"{measure} per step", amp="off", batch=1, value=best[measure] * 1e3,
                            unit="ms", steps=trial.steps, samples=args.samples,
                            chunk=chunk if measure == "floor_chunked" else fitter.chunk or args.samples)
        if not args.skip_naive:
            print(f"[{layer}] (a) straightforward / ours = {best['naive'] / best['ours']:.2f}x")
        print(f"[{layer}] (b) ours / floor = {best['ours'] / floor:.3f} (the faster floor; vs one pass of n: "
              f"{best['ours'] / best['floor']:.3f}); ours includes its σ_f² pass, 1/{trial.steps} of the trial "
              f"(goal ≤ 1.15 on CPU)")
        full = SigmaFitter(feature, cfg, device)
        if cfg.compile:
            full.fit(x, seeds=[0])  # compiles the full fit's graphs
        t, fits = timed(lambda: full.fit(x, seeds=[0]), device)
        print(f"[{layer}] one full fit (T={cfg.steps}, T_break={cfg.break_steps}): {t:.2f} s, "
              f"{fits[0].steps_run} steps run; a sigma run costs images × checkpoints × that")
        figures.add(layer=layer, measure="full fit", amp="off", batch=1, value=t, unit="s", steps=fits[0].steps_run,
                    samples=args.samples, chunk=full.chunk or args.samples)
        if device.type == "cuda" or args.sweep:
            batch_throughput(feature, cfg, size, device, args.cuda_batches, layer, figures)
        if args.map_effect:
            map_effect(feature, cfg.with_(compile=False), size, device, args.map_effect, layer, args.data, figures)


def images(n: int, size: int, device, data: Path | None) -> torch.Tensor:
    """``n`` images of ``data`` (its train split), or random normalised-scale inputs without it."""
    if data is None:
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    ds = MaskedImageFolder(data, "train", transform=eval_transform(size))
    return torch.stack([ds[i * len(ds) // n][0] for i in range(n)]).to(device)


def map_effect(feature, cfg: SigmaConfig, size: int, device, n_images: int, layer: str, data,
               figures: Figures) -> None:
    """(d) how much --amp (bf16) and --channels-last change the maps: same images, seeds and settings."""
    x = images(n_images, size, device, data)
    seeds = list(range(n_images))
    base = SigmaFitter(feature, cfg, device).fit(x, seeds)
    for label, changed in (("amp bf16", cfg.with_(amp="bf16")), ("channels-last", cfg.with_(channels_last=True))):
        fits = SigmaFitter(feature, changed, device).fit(x, seeds)
        d_h, corr, same_step = [], [], 0
        for a, b in zip(base, fits):
            ha, hb = torch.from_numpy(a.sigma).log(), torch.from_numpy(b.sigma).log()
            d_h.append((ha - hb).abs().mean().item())
            corr.append(torch.corrcoef(torch.stack([ha.flatten(), hb.flatten()]))[0, 1].item())
            same_step += a.best_step == b.best_step
        print(f"[{layer}] (d) {label}: mean |ΔH| per cell {sum(d_h) / len(d_h):.4f} nats, corr(log σ*) "
              f"{sum(corr) / len(corr):.4f}, same σ* step {same_step}/{len(base)} ({device.type})")
        figures.add(layer=layer, measure=f"{label} corr(log sigma*)", amp="bf16" if "amp" in label else "off",
                    batch=n_images, value=sum(corr) / len(corr), unit="", steps=cfg.steps, samples=cfg.samples)


PRECISIONS = {"fp32": {}, "bf16": {"amp": "bf16"}, "bf16+channels_last": {"amp": "bf16", "channels_last": True}}


def foregrounds(n: int, size: int, grid: int, data: Path | None) -> np.ndarray:
    """(n, g, g) foreground cells of the images :func:`images` returns: their masks' (the central square for an image
    without one), or the central square for every image without ``data``."""
    if data is None:
        return np.stack([central_square(grid)] * n)
    ds = MaskedImageFolder(data, "train")
    where = Foreground(missing="central")
    return np.stack([where.cells(ds.mask_values(i * len(ds) // n), size, grid)[0] for i in range(n)])


def concept_cells(fits, fg: np.ndarray, b: float) -> np.ndarray:
    """(N, g, g) bool: the concept cells of N images' σ* (H̄_bg − H > b, H̄_bg over these images; kdq's rule)."""
    H = np.stack([entropy_map(fit.sigma.astype(np.float64)) for fit in fits])[:, None]  # (N, K=1, g, g)
    return concept_masks(H, background_baseline(H, fg), b)[:, 0]


def log_sigma_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two maps' log σ over their cells (NaN when either is constant)."""
    la, lb = np.log(a.astype(np.float64)).ravel(), np.log(b.astype(np.float64)).ravel()
    if la.std() == 0 or lb.std() == 0:
        return math.nan
    return float(np.corrcoef(la, lb)[0, 1])


def precision_effect(feature, cfg: SigmaConfig, size: int, device, n_images: int, layer: str, data: Path | None,
                     repeats: int, figures: Figures) -> None:
    """(e) the whole fit of ``n_images`` in fp32, bf16 and bf16 + channels-last (same images, seeds and settings):
    time per image (min of ``repeats`` alternated runs), fits/s, and each bf16 variant's maps against fp32's."""
    x, seeds = images(n_images, size, device, data), list(range(n_images))
    fg, b = foregrounds(n_images, size, cfg.grid, data), MetricsConfig.b
    best, fits = {label: math.inf for label in PRECISIONS}, {}
    labels = list(PRECISIONS)
    for r in range(repeats):  # alternated, order rotated
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            fitter = SigmaFitter(feature, cfg.with_(**PRECISIONS[label]), device)
            t, fits[label] = timed(lambda: fitter.fit(x, seeds), device)
            best[label] = min(best[label], t / n_images)
    base = concept_cells(fits["fp32"], fg, b)
    print(f"[{layer}] (e) fp32: {best['fp32']:.2f} s per fit ({1 / best['fp32']:.3f} fits/s; {n_images} images, T = "
          f"{cfg.steps}, T_break = {cfg.break_steps}, {np.mean([f.steps_run for f in fits['fp32']]):.1f} steps run, "
          f"{base.sum()} concept cells of {base.size})")
    figures.add(layer=layer, measure="precision fp32 s/fit", amp="off", batch=n_images, value=best["fp32"], unit="s",
                steps=cfg.steps, samples=cfg.samples)
    for label in labels[1:]:
        other = concept_cells(fits[label], fg, b)
        both, either = (base & other).sum(), (base | other).sum()
        corr = [log_sigma_corr(a.sigma, c.sigma) for a, c in zip(fits["fp32"], fits[label])]
        same_step = sum(a.best_step == c.best_step for a, c in zip(fits["fp32"], fits[label]))
        print(f"[{layer}] (e) {label}: {best[label]:.2f} s per fit ({1 / best[label]:.3f} fits/s) = "
              f"{best['fp32'] / best[label]:.2f}x fp32; corr(log σ*) per image mean {np.nanmean(corr):.4f}, min "
              f"{np.nanmin(corr):.4f}; same σ* step {same_step}/{n_images}; cells classified alike "
              f"{(base == other).mean():.1%}, concept cells in both / in either {both}/{either} "
              f"({both / either if either else math.nan:.1%})")
        figures.add(layer=layer, measure=f"precision {label} s/fit", amp="bf16", batch=n_images, value=best[label],
                    unit="s", steps=cfg.steps, samples=cfg.samples)
        figures.add(layer=layer, measure=f"precision {label} corr(log sigma*)", amp="bf16", batch=n_images,
                    value=float(np.nanmean(corr)), unit="", steps=cfg.steps, samples=cfg.samples)
        figures.add(layer=layer, measure=f"precision {label} concept cells alike", amp="bf16", batch=n_images,
                    value=float((base == other).mean()), unit="", steps=cfg.steps, samples=cfg.samples)


def batch_throughput(feature, cfg: SigmaConfig, size: int, device, batches: list[int], layer: str,
                     figures: Figures) -> None:
    """(c) fits per second at several B, with and without bf16 autocast; B = 1 against the best B."""
    batches = sorted(set(batches) | {1})
    best = {}
    for amp in (None, "bf16"):
        rates = {}
        for B in batches:
            fitter = SigmaFitter(feature, cfg.with_(amp=amp, break_steps=0), device)
            x = torch.randn(B, 3, size, size, device=device)
            try:
                fitter.fit(x, seeds=list(range(B)))  # warm-up (cuDNN, allocator, torch.compile)
                t, _ = timed(lambda: fitter.fit(x, seeds=list(range(B))), device)
            except torch.cuda.OutOfMemoryError:
                print(f"[{layer}] (c) B={B} amp={amp or 'off'}: out of memory")
                break  # a larger B will not fit either
            rates[B] = B / t
            print(f"[{layer}] (c) B={B:3d} amp={amp or 'off':4s}: {rates[B]:.3f} fits/s ({t / B:.2f} s per fit of "
                  f"{cfg.steps} steps; chunk {fitter.chunk or cfg.samples})")
            figures.add(layer=layer, measure="fits/s", amp=amp or "off", batch=B, value=rates[B], unit="1/s",
                        steps=cfg.steps, samples=cfg.samples, chunk=fitter.chunk or cfg.samples)
        if rates:
            top = max(rates, key=rates.get)
            best[amp] = rates[top]
            print(f"[{layer}] (c) amp={amp or 'off'}: B=1 {rates.get(1, math.nan):.3f} fits/s, best B={top} "
                  f"{rates[top]:.3f} fits/s = {rates[top] / rates.get(1, math.nan):.2f}x B=1")
    if len(best) == 2:
        print(f"[{layer}] (c) best with --amp bf16 / best without: {best['bf16'] / best[None]:.2f}x "
              f"({device.type}; --amp changes the maps slightly, see (d))")

if __name__ == "__main__":
    raise SystemExit(run(get_args_parser, main))
