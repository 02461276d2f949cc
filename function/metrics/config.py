"""The metrics stage's typed config, :class:`MetricsConfig` (docs/method.md §3 defaults): the parser of
``sigma/find_knowledge_new.py`` is built from it, and :func:`kdq.compare` takes its defaults (b, resamples, seed,
level) from it.  No torch here: ``--help`` stays fast."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdq.function.checks import BOOTSTRAP_COUNT, FINITE, NONNEGATIVE, POSITIVE_INT, SEED
from kdq.function.cli import UserError
from kdq.function.config import StageConfig, option
from kdq.function.data.options import foreground_options
from kdq.function.train import options as o
from kdq.models import LAYERS

INPUTS, METRICS, OUTPUT = "inputs", "metrics (docs/method.md §3)", "output"
NETS = ("label", "distil")
COMPAT = ("kdq", "original")
_FOREGROUND = foreground_options(INPUTS, recorded=True)


@dataclass(frozen=True)
class MetricsConfig(StageConfig):
    """find_knowledge: the label net against the distil net, from their sigma runs."""

    debug: bool = o.debug_option()
    label_sigma: list[Path] | None = option(None, "sigma run(s) of the label net (baseline): one per training run of "
                                                  "it, each trained with another --seed (several: a two-level "
                                                  "bootstrap over runs and images, docs/method.md §3)", INPUTS,
                                            type=Path, nargs="+", metavar="DIR", required=True)
    distil_sigma: list[Path] | None = option(None, "sigma run(s) of the distil net (student), one per training run, "
                                                   "as --label-sigma", INPUTS, type=Path, nargs="+", metavar="DIR",
                                             required=True)
    label_run: list[Path] | None = option(None, "training run(s) of the label net (their weight_diff.npy), one per "
                                                "--label-sigma in the same order; default: recorded in each sigma run",
                                          INPUTS, type=Path, nargs="+", metavar="RUN")
    distil_run: list[Path] | None = option(None, "training run(s) of the distil net (phase-1 weight_diff.npy), one "
                                                 "per --distil-sigma; default: recorded in each sigma run", INPUTS,
                                           type=Path, nargs="+", metavar="RUN")
    data: Path | None = option(None, "dataset root with masks under seg/ (docs/method.md §4)", INPUTS, type=Path,
                               metavar="ROOT", required=True)
    modality: str | None = o.modality_option(group=INPUTS)
    split: str = option("train", "the split the sigma runs' image names are relative to", INPUTS, metavar="SPLIT")
    layer: str | None = option(None, "layer analysed; 'all' = one table over the four layers (see folders below); "
                                     "default: the layer the sigma run records", INPUTS, choices=(*LAYERS, "all"))
    checkpoints: list[str] | None = option(None, "epochs of the sigma files' K entries, oldest first, or 'paper' "
                                                 "(each net's schedule from its training run); default: recorded in "
                                                 "the sigma runs' run.json", INPUTS, nargs="+", metavar="E")
    label_checkpoints: list[str] | None = option(None, "the label net's epochs when its schedule differs from the "
                                                       "distil net's", INPUTS, nargs="+", metavar="E")
    distil_checkpoints: list[str] | None = option(None, "the distil net's epochs when its schedule differs from the "
                                                        "label net's", INPUTS, nargs="+", metavar="E")
    grid: int | None = option(None, "expected sigma grid g (checked against the files; default: read from them)",
                              INPUTS, check=POSITIVE_INT, metavar="G")
    arch: str | None = option(None, "architecture, for the input size S and the ResNet m̂ rule; default: recorded in "
                                    "the runs", INPUTS, metavar="ARCH")
    image_size: int | None = option(None, "input side S the masks are resized to before the grid; default: the "
                                          "arch's (224 if unknown)", INPUTS, check=POSITIVE_INT, metavar="S")
    foreground: str = _FOREGROUND["foreground"]
    missing_mask: str = _FOREGROUND["missing_mask"]
    exact_masks: bool = _FOREGROUND["exact_masks"]
    mask_pad: float | None = _FOREGROUND["mask_pad"]
    b: float = option(0.2, "concept threshold: H̄_bg(k) − H_i(k) > b", METRICS, check=NONNEGATIVE)
    mhat_skip_epoch0: str = option("auto", "leave epoch 0 out of m̂ = argmax_k N_fg; auto = yes for ResNets, as the "
                                           "original code (whose off-by-one reading of D there kdq corrects: --compat "
                                           "original keeps it)", METRICS, choices=("auto", "yes", "no"))
    compat: str = option("kdq", "original: reproduce the original code's arithmetic where it differs (see folders "
                                "below)", METRICS, choices=COMPAT)
    bootstrap: int = option(1000, "bootstrap resamples over images", METRICS, check=BOOTSTRAP_COUNT, metavar="N")
    level: float = option(0.95, "interval level", METRICS, check=FINITE, metavar="P")  # in (0, 1): checks.LEVEL
    seed: int = option(0, "bootstrap seed", METRICS, check=SEED, metavar="SEED")
    out: Path | None = option(None, "folder for metrics.json, metrics.csv, report.md, figures/", OUTPUT, type=Path,
                              metavar="DIR", required=True)
    overwrite: bool = o.overwrite_option("replace a report already in --out", OUTPUT)
    threads: int | None = o.threads_option(OUTPUT)
    no_figures: bool = option(False, "skip the figures (numbers and report only)", OUTPUT, action="store_true")
    progress: bool = o.progress_option(OUTPUT, "no progress bar over the bootstrap (it is plain lines anyway when "
                                               "stderr is not a terminal)")
    show_images: int = option(3, "images in the entropy-map figure", OUTPUT, check=POSITIVE_INT, metavar="N")
    max_columns: int = option(8, "checkpoints shown in the entropy-map figure", OUTPUT, check=POSITIVE_INT,
                              metavar="N")

    GROUPS = (INPUTS, METRICS, OUTPUT)

    def net_checkpoints(self) -> dict[str, tuple[list[str] | None, str]]:
        """Per net, its ``--<net>-checkpoints`` words (or the shared ``--checkpoints``) and the flag they came
        from; the two spellings exclude each other."""
        out = {}
        for net in NETS:
            own = getattr(self, f"{net}_checkpoints")
            if own is not None and self.checkpoints is not None:
                raise UserError(f"--checkpoints and --{net}-checkpoints exclude each other")
            out[net] = (own, f"--{net}-checkpoints") if own is not None else (self.checkpoints, "--checkpoints")
        return out
