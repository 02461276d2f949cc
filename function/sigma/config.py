"""The settings of the σ fit (docs/method.md §2): :class:`SigmaConfig`, the settings of one fit (the Python
API's ``kdq.SigmaConfig``), and :class:`SigmaRunConfig`, the sigma stage's typed config whose fit fields take their
defaults from it (each default written once, in :class:`SigmaConfig`).  No torch here: ``--help`` stays fast."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from kdq.function.archs import arch_option, image_size_option, taps_option
from kdq.function.checks import (FINITE, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, SIGMA0, check_below,
                                 check_bool, check_choice, check_in, check_optional, check_ordered)
from kdq.function.config import StageConfig, option
from kdq.function.data.options import foreground_options
from kdq.function.train import options as o
from kdq.models import LAYERS


def decision_step(steps: int, break_steps: int) -> int:
    """The step after which the fit stops or escalates λ: ``T − T_break − 1``."""
    return steps - break_steps - 1




def check_fit_settings(values: dict, label: Callable[[str], str] = str) -> None:
    """The rules of the fit's step settings, on ``values`` (by field name), each named by ``label(field)`` in the
    error (the sigma stage passes its flags' names): g, n, T positive integers, T_break in 0..T−1, lr > 0."""
    for name in ("grid", "samples", "steps"):
        check_in(label(name), values[name], POSITIVE_INT)
    check_below(label("break_steps"), values["break_steps"], values["steps"],
                label("steps") if label is not str else f"steps = {values['steps']}")
    check_in(label("lr"), values["lr"], POSITIVE)


AMP_CHOICES = ("bf16", "fp16")  # autocast dtypes of the feature forward


@dataclass(frozen=True)
class SigmaConfig:
    """The settings of one fit; defaults are docs/method.md §2's.  ``lam`` None is the family's λ
    (``kdq.models.FAMILIES``: 7 for VGG/AlexNet and others, 6 for ResNets), set by :meth:`resolved` — which
    :func:`kdq.fit_sigma`, the sigma stage and :class:`SigmaFitter` call with the net's family."""

    grid: int = 16  # g: σ is g×g
    samples: int = 96  # n: noise samples per step (and for σ_f²)
    steps: int = 80  # T
    break_steps: int = 20  # T_break: the decision comes after step T − T_break − 1
    lr: float = 1e-4  # plain SGD on σ
    sigma0: float = 0.01  # σ₀: the initial σ and the noise scale of σ_f²
    target_entropy: float = -2.8  # H*
    lam: float | None = None  # λ; None: the architecture family's (see resolved)
    lambda_factor: float = 1.5  # λ ← factor·λ when the target was not reached by the decision step
    sigma_min: float = 1e-3
    sigma_max: float = 1.0
    sample_chunk: int | None = None  # samples per forward pass (None: 32 on CPU, else all n, halved on OOM)
    amp: str | None = None  # None, "bf16" or "fp16": autocast of the feature forward
    channels_last: bool = False  # feed the net channels-last inputs
    compile: bool = False  # torch.compile h = act(feature(x)) (a runtime option: same maps up to float rounding)

    def __post_init__(self):
        """Every field checked by the rules the sigma stage's flags follow (:mod:`kdq.function.checks`): a
        ValueError (out of range) or TypeError (wrong type) naming the field."""
        check_fit_settings(vars(self))
        for name in ("lambda_factor", "sigma_min", "sigma_max"):
            check_in(name, getattr(self, name), POSITIVE)
        check_optional("lam", self.lam, POSITIVE)
        check_ordered("sigma_min", self.sigma_min, "sigma_max", self.sigma_max)
        check_in("sigma0", self.sigma0, SIGMA0)
        check_in("target_entropy", self.target_entropy, FINITE)
        check_optional("sample_chunk", self.sample_chunk, POSITIVE_INT)
        check_choice("amp", self.amp, (None, *AMP_CHOICES))
        for name in ("channels_last", "compile"):
            check_bool(name, getattr(self, name))

    def resolved(self, family: str | None) -> "SigmaConfig":
        """This config with ``lam`` None replaced by the λ of the architecture ``family`` (docs/method.md §2)."""
        from kdq.models import family_defaults

        return self if self.lam is not None else replace(self, lam=family_defaults(family).lam)

    @property
    def decision(self) -> int:
        return decision_step(self.steps, self.break_steps)

    def with_(self, **changes) -> "SigmaConfig":
        return replace(self, **changes)


NET, IMAGES, FIT, SPEED = "the net", "images", "the fit (docs/method.md §2 defaults)", "speed"
_RECORDED = "the --checkpoint_root run"
_FOREGROUND = foreground_options(IMAGES)
_RUNTIME = {"results": False}


@dataclass(frozen=True)
class SigmaRunConfig(StageConfig):
    """train_sigma: σ maps of a training run's checkpoints.  A field that defines results must be equal on
    ``--resume``; the draw's size (``--pic-num``, ``--effect-num``) may change (the draw's prefix is checked)."""

    debug: bool = o.debug_option()
    checkpoint_root: Path | None = option(None, "training run folder holding <e>.pth.tar checkpoints (train_net or "
                                                "distillation)", NET, names=("--checkpoint_root", "--checkpoint-root"),
                                          type=Path, required=True)
    arch: str | None = arch_option(NET, recorded=_RECORDED)
    taps: str | None = taps_option(NET, _RECORDED)
    image_size: int | None = image_size_option(NET, _RECORDED)
    layer: str | None = option(None, "layer whose feature h = ReLU(layer(x)) is kept", NET, choices=LAYERS,
                               required=True)
    checkpoints: list[int] | None = option(None, "epochs to fit, stored oldest first (default: the original's "
                                                 "schedule 0 2 5 10 ... 150, and 170 ... 400 past 150 epochs, when the "
                                                 "run holds all of its epochs; otherwise every checkpoint in the run)",
                                           NET, type=int, nargs="+", metavar="E", results=False)
    data: Path | None = option(None, "dataset root (<root>/<split>/<class>/<image>)", IMAGES, type=Path,
                               required=True)
    modality: str | None = o.modality_option(group=IMAGES)
    split: str = option("train", "split to draw images from", IMAGES)
    foreground: str = _FOREGROUND["foreground"]
    missing_mask: str = _FOREGROUND["missing_mask"]
    exact_masks: bool = _FOREGROUND["exact_masks"]
    mask_pad: float = _FOREGROUND["mask_pad"]
    pic_num: int = option(500, "images drawn from the split: random.seed(--pic-seed); random.sample(range(N), "
                               "pic_num) over the split listed class by class (classes and files sorted), as the "
                               "original", IMAGES, check=POSITIVE_INT, results=False)
    pic_seed: int = option(0, "seed of the draw (the original's --pic_seed)", IMAGES, check=SEED)
    effect_num: int = option(50, "stop once this many effective images exist", IMAGES, check=POSITIVE_INT,
                             results=False)
    effective_rule: str = option("on", "off: keep every image with σ_f² > 0, skipping the fg/bg entropy rule (to "
                                       "look at all drawn images; not the paper's method)", IMAGES,
                                 choices=("on", "off"))
    effective_start: int | None = option(None, "first epoch at which the fg/bg rule applies (default: 40, as the "
                                               "original, for runs of 150 epochs or more; 40 of 150 scaled to a "
                                               "shorter run)", IMAGES, check=NONNEGATIVE_INT, metavar="E")
    grid: int = option(SigmaConfig.grid, "σ is grid×grid cells (a grid that does not divide the input size gives "
                                         "uneven cells, as the original's nearest upsampling: AlexNet's 227 px with "
                                         "16 cells of 14 or 15 pixels)", FIT, check=POSITIVE_INT)
    samples: int = option(SigmaConfig.samples, "noise samples per step (and for σ_f²)", FIT, check=POSITIVE_INT)
    steps: int = option(SigmaConfig.steps, "SGD steps T", FIT, check=POSITIVE_INT)
    break_steps: int = option(SigmaConfig.break_steps, "T_break: after step T-T_break-1 stop if the target entropy "
                                                       "was exceeded, else λ×1.5", FIT, type=int)
    lr: float = option(SigmaConfig.lr, "SGD learning rate on σ", FIT, check=POSITIVE)
    sigma0: float = option(SigmaConfig.sigma0, "initial σ and noise scale of σ_f² (σ is clamped to "
                                               f"[{SigmaConfig.sigma_min:g}, {SigmaConfig.sigma_max:g}] during the "
                                               "fit)", FIT, check=SIGMA0)
    target_entropy: float = option(SigmaConfig.target_entropy, "H*: σ* is the step whose H̄ is nearest", FIT,
                                   check=FINITE)
    lam: float | None = option(SigmaConfig.lam, "entropy weight λ (default: 6 for ResNets, 7 for VGG, AlexNet and "
                                                "any other model: kdq.models.FAMILIES)", FIT, names=("--lambda",),
                               check=POSITIVE)
    batch_images: int = option(1, "images fitted at once (independent σ, noise, λ and stopping); raise it on a GPU",
                               SPEED, check=POSITIVE_INT, **_RUNTIME)
    sample_chunk: int | None = option(SigmaConfig.sample_chunk, "noise samples per forward pass, gradients "
                                      "accumulated (same result up to rounding, less memory); default: 32 on the "
                                      "CPU (faster), else all, halved automatically on CUDA out-of-memory", SPEED,
                                      check=POSITIVE_INT, **_RUNTIME)
    amp: str | None = option(SigmaConfig.amp, "the steps' forward and backward in bf16 (unless fp16 is named; σ_f² "
                                              "stays fp32): on CUDA, or on a CPU with bf16 units (amx_bf16, "
                                              "avx512_bf16; elsewhere it warns: slower); changes the maps "
                                              "(docs/performance.md)", SPEED, choices=AMP_CHOICES, nargs="?",
                             const="bf16")
    channels_last: bool = option(False, "channels-last memory format for conv nets (CUDA, and with --amp on the "
                                        "CPU: bf16 + channels-last is the fastest CPU fit)", SPEED, action="store_true",
                                 **_RUNTIME)
    cudnn_benchmark: bool = option(False, "let cuDNN pick the fastest conv algorithms", SPEED, action="store_true",
                                   **_RUNTIME)
    compile: bool = option(False, "torch.compile (inductor) the truncated forward h = ReLU(layer(x)); the first fits "
                                  "pay the compile time (tens of seconds on a CPU); same maps up to float rounding, "
                                  "so --resume accepts a run made with or without it", SPEED, action="store_true",
                           **_RUNTIME)
    out: Path | None = option(None, "sigma run folder to write", "run", type=Path, required=True, **_RUNTIME)
    seed: int = option(0, "seed of every image's noise (by image and epoch)", "run", check=SEED)
    device: str = o.device_option()
    threads: int | None = o.threads_option()
    deterministic: bool = o.deterministic_option(what="deterministic algorithms (slower on CUDA): two runs write "
                                                      "byte-identical files")
    resume: bool = o.resume_option("continue the run in --out (finished images are kept)")
    overwrite: bool = o.overwrite_option()
    progress: bool = o.progress_option()

    GROUPS = (NET, IMAGES, FIT, SPEED, "run")

    def fit(self, family: str | None) -> SigmaConfig:
        """The settings of each fit, λ resolved for the architecture ``family``."""
        return SigmaConfig(grid=self.grid, samples=self.samples, steps=self.steps, break_steps=self.break_steps,
                           lr=self.lr, sigma0=self.sigma0, target_entropy=self.target_entropy, lam=self.lam,
                           sample_chunk=self.sample_chunk, amp=self.amp, channels_last=self.channels_last,
                           compile=self.compile).resolved(family)
