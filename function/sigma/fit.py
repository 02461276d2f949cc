"""The information-discarding fit of docs/method.md §2: one noise map σ (g×g) per image and checkpoint.

The fit knows nothing about checkpoints, files or arguments: it takes a *feature function*
``feature(x) -> pre-activation`` (the truncated forward of a net, or any callable in tests) and a
batch of images, and returns one :class:`SigmaFit` per image::

    fitter = SigmaFitter(feature, SigmaConfig(grid=16, samples=96), device)
    fits = fitter.fit(images, seeds=[derive_seed(seed, index, epoch) for index in indices])
    fits[0].sigma            # σ* (g, g): the σ of the step whose mean entropy is nearest the target

What one fit does (docs/method.md §2, the original ``train_sigma.py``):

1. ``h(x) = act(feature(x))`` (``act`` = ReLU) once, without gradient;
   ``σ_f² = MSE(h(x + σ₀ε), h(x))`` over ``n`` samples and all feature elements.
2. For ``t = 0 .. T-1``: σ is clamped to ``[σ_min, σ_max]``; that σ and its mean entropy
   ``H̄ = mean_cells(log σ + ½ log 2πe)`` are recorded; a fresh batch of ``n`` noise samples gives
   ``L = MSE(h(x + up(σ)⊙ε), h(x)) / σ_f² − λ·H̄`` and plain SGD updates σ (``σ -= lr·∂L/∂σ``).
3. At step ``d = T − T_break − 1``: if ``max(H̄[0..d]) > H*`` the fit stops (steps ``d+1..T-1`` are
   not run), else ``λ ← 1.5·λ`` for the remaining steps.
4. σ* is the recorded σ whose ``H̄`` is nearest ``H*`` (first one on ties).

Batching: the B images of one call are fitted together with independent σ, noise, λ and stopping; an
image that has stopped is dropped from the batch.  On a GPU one forward pass takes the ``A·n`` inputs of
the A images still running; on the CPU each image's inputs are their own pass (a math library picks its
kernels by the shape of the whole pass, so a shared pass would make an image's bits depend on its
companions).  Each image's noise comes from its own ``torch.Generator`` (seeded by the caller, on the
compute device), drawn as one ``(n, 3, S, S)`` block per step, so the noise an image sees does not
depend on batching, ordering or ``sample_chunk``.  The gradient of the summed loss with respect to one
image's σ is exactly that image's own gradient, and all per-image arithmetic runs on tensors whose
shapes do not depend on the batch: on the CPU an image's results are bit-identical whatever batch it
is fitted in (tested); ``sample_chunk`` changes the summation order only (float rounding).  On CUDA,
cuDNN may pick other algorithms for other batch sizes, so batches agree to float rounding.
``compile`` runs ``h`` through ``torch.compile`` (inductor): other kernels, so the maps agree with
eager ones to float rounding, which the SGD on σ can amplify where a ReLU input sits near 0 (tested:
log σ* within 1e-4).

Precision (``amp``): σ_f² is always computed in fp32 (from an fp32 h(x)); the steps' forward and backward, and
the h(x) they compare with, run in bf16/fp16.  On the CPU with ``amp="bf16"`` the feature module is cast to bf16
once per :meth:`SigmaFitter.fit` call (:func:`kdq.function.sigma.precision.bf16_copy`) instead of autocast; the
maps then differ from fp32's (docs/performance.md, "bf16 on the CPU"), so fp32 stays the default.

Records per image (arrays of length T): ``entropy`` = H̄ of the σ used at each step,
``feature_loss`` = MSE/σ_f², ``penalty_loss`` = −λ·H̄ (λ of that step); steps that were not run are
**NaN** (the original code left zeros there).  A fit is *failed* when σ_f² is 0 or not finite, or
when no step has a finite entropy; its σ* is all zeros (docs/method.md §4: a value ≤ 0 marks a failed fit).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdq.function.sigma.config import SigmaConfig, decision_step  # noqa: F401 - the fit's settings live there
from kdq.function.sigma.precision import bf16_copy
from kdq.function.sigma.units import Cells, UnitSpace, unit_space

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
CPU_CHUNK = 32  # default noise samples per forward pass on the CPU


# ---------------------------------------------------------------------------------------------
# the rules of one fit (docs/method.md §2 steps 3 and 4)
# ---------------------------------------------------------------------------------------------
def reached_target(entropy_so_far: torch.Tensor, target: float) -> torch.Tensor:
    """The decision after step ``T − T_break − 1``, per image (one column each of ``(steps, images)``):
    True — stop — when the largest H̄ recorded so far exceeds the target, False — escalate λ — otherwise.
    NaN entries are ignored (a fit whose entropies are all NaN does not stop: it escalates λ)."""
    return entropy_so_far.nan_to_num(nan=-math.inf).amax(0) > target


def select_step(entropy: Sequence[float] | np.ndarray, target: float) -> int:
    """Index of the step whose H̄ is nearest ``target`` (the first on ties); -1 when none is finite.

    Steps that were not run (NaN) are never selected.
    """
    h = np.asarray(entropy, dtype=np.float64)
    dist = np.abs(h - target)
    dist[~np.isfinite(dist)] = np.inf
    if not np.isfinite(dist).any():
        return -1
    return int(np.argmin(dist))


# ---------------------------------------------------------------------------------------------
# configuration and results
# ---------------------------------------------------------------------------------------------
@dataclass
class SigmaFit:
    """The result of one (image, checkpoint) fit.  Arrays of length T hold NaN for steps not run."""

    sigma: np.ndarray  # (g, g) float32 (cells; (U,) for tokens and points): σ*; all zeros for a failed fit
    entropy: np.ndarray  # (T,) float64: H̄ of the σ used at each step
    feature_loss: np.ndarray  # (T,) float64: MSE / σ_f²
    penalty_loss: np.ndarray  # (T,) float64: −λ·H̄
    sigma_f2: float  # σ_f² (the original code's "sigma_f")
    best_step: int  # index of σ* (-1 for a failed fit)
    steps_run: int
    final_lambda: float
    history: np.ndarray = field(repr=False)  # (steps_run, g, g) float32: the σ used at each step
    valid: np.ndarray | None = None  # (U,) bool: the units that are units (tokens: not padding); None: all

    @property
    def failed(self) -> bool:
        return self.best_step < 0


# ---------------------------------------------------------------------------------------------
# the fitter
# ---------------------------------------------------------------------------------------------
class SigmaFitter:
    """Fits σ for batches of images through one feature function (one net at one checkpoint).

    ``feature(x)`` maps ``(N, 3, S, S)`` inputs to an ``(N, ...)`` pre-activation; ``activation``
    (ReLU by default, identity for closed-form tests) gives ``h``.  The caller puts the net in eval
    mode and turns off its parameters' gradients; only σ is optimised.
    """

    def __init__(self, feature: FeatureFn, config: SigmaConfig, device: torch.device | str = "cpu",
                 activation: Callable[[torch.Tensor], torch.Tensor] = F.relu, family: str | None = None):
        self.feature = feature
        self.cfg = config.resolved(family)  # λ None: the family's (an unknown family: "other")
        self.device = torch.device(device)
        self.activation = activation
        # compiled lazily by torch.compile on the first call of each input shape and grad mode (a few
        # graphs per run); fullgraph, so a graph break is an error rather than a silent partial eager run
        self._net = torch.compile(self._features, fullgraph=True) if config.compile else self._features
        # samples per forward pass (per image).  Auto (sample_chunk=None): on the CPU small passes keep
        # the activations in cache (measured ~15% faster for vgg_tiny than one pass of 96); elsewhere
        # all n at once, halved on CUDA out-of-memory.  Chunking changes only summation order.
        if config.sample_chunk is not None:
            self.chunk = config.sample_chunk
        else:
            self.chunk = min(CPU_CHUNK, config.samples) if self.device.type == "cpu" else None
        self.batch_images = self.device.type != "cpu"  # one pass for all images of a batch (see _forward_blocks)

    # -- public -------------------------------------------------------------------------------
    def fit(self, images: torch.Tensor, seeds: Sequence[int],
            lam: float | Sequence[float] | None = None, units: str | UnitSpace | None = None) -> list[SigmaFit]:
        """Fit σ for each input of ``images``; ``seeds[i]`` seeds input i's noise.  ``units``
        (:mod:`kdq.function.sigma.units`): None or ``"cells"`` — images ``(B, C, S, S)``, σ on the config's g×g
        grid; a :class:`~kdq.function.sigma.units.Tokens` or :class:`~kdq.function.sigma.units.Points` space —
        inputs ``(B, U, D)`` (embedding outputs, coordinates), one σ per unit."""
        cfg = self.cfg
        space = unit_space(units, cfg.grid)
        if isinstance(space, Cells):
            if images.dim() != 4:
                raise ValueError(f"images must be (B, C, S, S), got {tuple(images.shape)}")
            S, S2 = images.shape[2:]
            if S != S2:
                raise ValueError(f"images must be square, got {S}×{S2}")
        B = images.shape[0]
        if len(seeds) != B:
            raise ValueError(f"{B} images but {len(seeds)} seeds")
        if B == 0:
            return []
        lams = [cfg.lam] * B if lam is None else ([float(lam)] * B if np.isscalar(lam) else list(lam))
        dev = self.device
        x = images.to(dev, torch.float32)
        space = space.bind(x)
        gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
        T, shape = cfg.steps, space.sigma_shape(x)

        net = self._net_for_call()  # the steps' h: bf16 / fp16 with amp
        with torch.no_grad():  # σ_f² in fp32 whatever amp (see _reference)
            clean = self._h(self._reference, x, space)  # (B, F) float32
            sigma_f2 = self._sigma_f2(self._reference, x, clean, gens, space)  # (B,) float32
            if self.cfg.amp is not None:  # the steps compare h(x + σε) with h(x) through the same bf16 net
                clean = self._h(net, x, space)

        sigma = torch.full((B, *shape), cfg.sigma0, device=dev)
        lam_t = torch.tensor(lams, dtype=torch.float32, device=dev)
        hist_sigma = torch.zeros((T, B, *shape), device=dev)
        hist = torch.full((3, T, B), float("nan"), device=dev)  # entropy, feature loss, penalty loss
        steps_run = [0] * B
        noiseless = space.noiseless()  # tokens/points of zero scale: no noise reaches them, σ_f² = 0 by definition
        if noiseless is not None:
            sigma_f2 = torch.where(noiseless, torch.zeros_like(sigma_f2), sigma_f2)
        ok = torch.isfinite(sigma_f2) & (sigma_f2 > 0)
        active = [i for i, good in enumerate(ok.tolist()) if good]  # one sync per fit

        t = 0
        while active and t < T:
            # the active set changes only at the decision step, so the loop runs in at most 2 phases
            last = cfg.decision if t <= cfg.decision else T - 1
            idx = torch.tensor(active, device=dev)
            xa, ca, fa, la = x[idx], clean[idx], sigma_f2[idx], lam_t[idx]
            ga = [gens[i] for i in active]
            eps = torch.empty((len(active), cfg.samples, *x.shape[1:]), device=dev)
            for t in range(t, last + 1):
                s = sigma[idx].clamp_(cfg.sigma_min, cfg.sigma_max)
                hist_sigma[t, idx] = s
                for j, gen in enumerate(ga):
                    eps[j].normal_(generator=gen)
                fl, pen, h_bar, grad = self._step(net, xa, ca, fa, la, s, eps, space, active)
                hist[0, t, idx], hist[1, t, idx], hist[2, t, idx] = h_bar, fl, pen
                if t == cfg.decision:
                    stop = reached_target(hist[0, : t + 1, idx], cfg.target_entropy).tolist()  # one sync
                    for i, st in zip(active, stop):
                        if st:
                            steps_run[i] = t + 1
                    keep = [j for j, st in enumerate(stop) if not st]
                    la = la * cfg.lambda_factor
                    lam_t[idx] = torch.where(torch.tensor(stop, device=dev), lam_t[idx], la)
                    sigma[idx[keep]] = s[keep] - cfg.lr * grad[keep]
                    active = [active[j] for j in keep]
                else:
                    sigma[idx] = s - cfg.lr * grad
            t = last + 1
        for i in active:
            steps_run[i] = T
        return self._results(hist_sigma, hist, sigma_f2, lam_t, steps_run, space)

    # -- internals ----------------------------------------------------------------------------
    def _net_for_call(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``h`` of one :meth:`fit` call, inputs to float32 ``(N, F)``.  bf16 on the CPU with an ``nn.Module`` feature
        (and no ``compile``): the module cast to bf16 once, here — its weights as they are now, so a caller that loads
        another checkpoint between calls gets it — rather than autocast re-casting every weight at every forward and
        backward (measured as fast or faster, docs/performance.md); otherwise :meth:`_forward` (autocast when
        ``amp`` is set)."""
        cfg = self.cfg
        if cfg.amp == "bf16" and self.device.type == "cpu" and not cfg.compile and isinstance(self.feature, nn.Module):
            cast = bf16_copy(self.feature, cfg.channels_last)
            return lambda inputs, *context: self._forward_cast(cast, inputs, *context)
        return self._forward

    def _forward_cast(self, cast: nn.Module, inputs: torch.Tensor, *context) -> torch.Tensor:
        """``h`` of a flat batch through the bf16 copy ``cast`` of the feature, as float32 ``(N, F)``."""
        inputs = inputs.to(torch.bfloat16, memory_format=torch.channels_last if self.cfg.channels_last
                           and inputs.dim() == 4 else torch.contiguous_format)
        return self.activation(cast(inputs, *context)).float().reshape(inputs.shape[0], -1)

    def _autocast(self):
        if self.cfg.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _features(self, inputs: torch.Tensor, *context) -> torch.Tensor:
        return self.activation(self.feature(inputs, *context))

    def _forward(self, inputs: torch.Tensor, *context, autocast: bool = True) -> torch.Tensor:
        """``h`` of a flat batch of inputs, as float32 ``(N, F)``; ``autocast`` False: plain fp32 (contiguous inputs
        when ``amp`` is set, so a bf16 fit's reference is the fp32 fit's to the bit)."""
        if self.cfg.channels_last and (autocast or self.cfg.amp is None) and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with self._autocast() if autocast else contextlib.nullcontext():
            out = self._net(inputs, *context)
        return out.float().reshape(inputs.shape[0], -1)

    def _reference(self, inputs: torch.Tensor, *context) -> torch.Tensor:
        """``h`` in fp32 whatever ``amp``: σ_f² (and the h(x) it is measured from) of every fit.  Measured
        (docs/performance.md, "bf16 on the CPU"): bf16 rounding adds a noise floor to MSE(h(x + σ₀ε), h(x)) that
        inflated σ_f² by ~20% on the demo's net and moved σ* by steps.  The steps' h(x), on the other hand, agrees
        best with fp32's maps when it comes from the same bf16 net as h(x + σε) (measured against an fp32 h(x): log σ*
        correlation 0.98 vs 0.97 at conv, 0.88 vs 0.63 at fc1)."""
        return self._forward(inputs, *context, autocast=False)

    def _forward_blocks(self, net, blocks: list[torch.Tensor], inputs: Sequence[int],
                        space: UnitSpace) -> list[torch.Tensor]:
        """``h`` of each image's block of noisy inputs (``inputs[j]``: the index of block j's input in the
        batch, for the further model inputs of ``space``: token ids).  On the CPU every block is its own pass, so
        an image's numbers never depend on the other images of its batch (math libraries pick their kernels by the
        shape of the whole pass); elsewhere the blocks go through the net together (faster on a GPU)."""
        contexts = [space.context(i, block.shape[0]) for i, block in zip(inputs, blocks)]
        if not self.batch_images or len(blocks) == 1:
            return [net(block, *context) for block, context in zip(blocks, contexts)]
        h = net(torch.cat(blocks), *(torch.cat(parts) for parts in zip(*contexts)))
        return list(h.split([block.shape[0] for block in blocks]))

    def _h(self, net, x: torch.Tensor, space: UnitSpace) -> torch.Tensor:
        """Clean features, one image per pass (a batch of one is what any batching reduces to)."""
        return torch.cat([net(x[j:j + 1], *space.context(j, 1)) for j in range(x.shape[0])])

    def _chunks(self, n: int):
        c = n if self.chunk is None else min(self.chunk, n)
        return [(a, min(a + c, n)) for a in range(0, n, c)]

    def _with_oom_retry(self, fn):
        """Run ``fn`` (one step's chunk loop); in auto mode halve the chunk on CUDA OOM and retry."""
        while True:
            try:
                return fn()
            except torch.cuda.OutOfMemoryError:
                if self.cfg.sample_chunk is not None:
                    raise
                current = self.cfg.samples if self.chunk is None else self.chunk
                if current <= 1:
                    raise
                self.chunk = max(1, current // 2)
                torch.cuda.empty_cache()

    # Per-image arithmetic (noisy inputs, squared errors, their gradients) is done image by image, on
    # tensors whose shapes do not depend on how many images share the batch; on a GPU only the net's
    # forward and backward see the whole batch, on the CPU not even they (_forward_blocks).  On the CPU
    # an image's numbers are then bit-identical whatever the batch, so resumed or differently sharded
    # runs write the same bytes.
    def _sigma_f2(self, net, x: torch.Tensor, clean: torch.Tensor, gens, space: UnitSpace) -> torch.Tensor:
        """σ_f² per image: MSE(h(x + σ₀ε), h(x)) over n samples and the feature elements."""
        cfg, B = self.cfg, x.shape[0]
        eps = torch.empty((B, cfg.samples, *x.shape[1:]), device=x.device)
        for j, gen in enumerate(gens):
            eps[j].normal_(generator=gen)

        def run():
            sse = [torch.zeros((), device=x.device) for _ in range(B)]
            for a, b in self._chunks(cfg.samples):
                blocks = [space.perturb0(j, x[j], cfg.sigma0, eps[j, a:b]) for j in range(B)]
                for j, h in enumerate(self._forward_blocks(net, blocks, range(B), space)):
                    sse[j] = sse[j] + (h - clean[j]).square().sum()
            return torch.stack(sse)

        sse = self._with_oom_retry(run)
        return sse / (cfg.samples * clean.shape[1])

    def _step(self, net, x, clean, sigma_f2, lam, s, eps, space: UnitSpace, active: list[int]):
        """One SGD step's loss terms and gradient for the active images (σ ``s`` already clamped; ``active[j]``:
        the batch index of active image j)."""
        cfg = self.cfg
        A, n = x.shape[0], cfg.samples
        denom = n * clean.shape[1] * sigma_f2  # (A,)

        def run():
            leaves = [s[j].detach().requires_grad_(True) for j in range(A)]
            h_bar = torch.stack([space.mean_entropy(i, leaf) for i, leaf in zip(active, leaves)])
            pen = -lam * h_bar
            pen.sum().backward()
            fl = [torch.zeros((), device=x.device) for _ in range(A)]
            for a, b in self._chunks(n):
                blocks = [space.perturb(active[j], x[j], leaves[j], eps[j, a:b]) for j in range(A)]
                parts = [(h - clean[j]).square().sum() / denom[j]
                         for j, h in enumerate(self._forward_blocks(net, blocks, active, space))]
                torch.stack(parts).sum().backward()
                fl = [f + p.detach() for f, p in zip(fl, parts)]
            grad = torch.stack([leaf.grad for leaf in leaves])
            return torch.stack(fl), pen.detach(), h_bar.detach(), grad

        return self._with_oom_retry(run)

    def _results(self, hist_sigma, hist, sigma_f2, lam_t, steps_run, space: UnitSpace) -> list[SigmaFit]:
        cfg = self.cfg
        hs = hist_sigma.cpu().numpy()
        hh = hist.cpu().numpy().astype(np.float64)
        f2 = sigma_f2.cpu().numpy().astype(np.float64)
        lams = lam_t.cpu().numpy().astype(np.float64)
        out = []
        for i in range(hs.shape[1]):
            entropy = hh[0, :, i].copy()
            best = select_step(entropy, cfg.target_entropy)
            valid = space.valid(i)
            valid = None if valid is None else valid.cpu().numpy().astype(bool)
            sig = hs[best, i].copy() if best >= 0 else np.zeros(hs.shape[2:], np.float32)
            if best >= 0 and not np.isfinite(sig if valid is None else sig[valid]).all():
                best, sig = -1, np.zeros_like(sig)
            out.append(SigmaFit(sigma=sig, entropy=entropy, feature_loss=hh[1, :, i].copy(),
                                penalty_loss=hh[2, :, i].copy(), sigma_f2=float(f2[i]), best_step=best,
                                steps_run=steps_run[i], final_lambda=float(lams[i]),
                                history=hs[: steps_run[i], i].copy(), valid=valid))
        return out
