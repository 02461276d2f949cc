"""The settings shared by the training stages (train_net, distillation, and the supplement's entry points, which are
those stages with other defaults), as config fields (:func:`kdq.function.config.option`): each function returns
one field, written once here; :mod:`kdq.function.train.config` lays them out per stage.  Nothing here imports
torch, so ``--help`` stays fast."""
from __future__ import annotations

from pathlib import Path

from kdq.function.checks import NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, Interval
from kdq.function.cli import DEVICE_HELP, EPOCHS, EPOCHS_OR_ZERO
from kdq.function.config import option
from kdq.function.train.schedules import LR_SCHEDULES

AUGMENT_CHOICES = ("auto", "standard", "heavy", "none")
TEACHER_FORMATS = ("kdq", "torchvision")  # distillation --teacher-format: how the teacher's state dict is keyed
DROPOUT = Interval(0, 1, hi_open=True)
PAPER_EPOCHS = 150  # docs/method.md §1: both training stages run 150 epochs by default
RUNTIME = {"results": False}  # a field that changes how a run executes, not what it computes


# ---- optimisation (docs/method.md §1 defaults) --------------------------------------------------
def epochs_option(group: str, what: str, growable: bool = False):
    return option(PAPER_EPOCHS, what, group, check=EPOCHS, growable=growable)


def lr_option(group: str, lr: float, extra: str = ""):
    return option(lr, "learning rate (of the first epoch)" + extra, group, check=POSITIVE)


def lr_schedule_option(group: str, schedule: str):
    return option(schedule, "logspace: log-spaced per epoch from --lr down to --lr/10^(--lr-down) (the original's "
                            "--logspace); constant: --lr throughout", group, choices=LR_SCHEDULES)


def lr_down_option(group: str):
    return option(1.0, "decades the logspace schedule falls over the run", group, check=POSITIVE, metavar="DECADES")


def batch_size_option(group: str, what: str = "global batch size (over all ranks)"):
    return option(64, what, group, check=POSITIVE_INT)


def momentum_option(group: str, scope: str = ""):
    return option(0.9, f"SGD momentum{scope}", group, check=NONNEGATIVE)


def weight_decay_option(group: str, scope: str = ""):
    return option(1e-4, f"SGD weight decay{scope}", group, check=NONNEGATIVE)


# ---- data ---------------------------------------------------------------------------------------
def data_option():
    return option(None, "dataset root (<root>/<split>/<class>/<image>)", "data", type=Path, required=True)


def modality_option(what: str = "the dataset", group: str = "data"):
    from kdq.function.data.modality import MODALITY_NAMES

    return option(None, f"what {what} holds: image, text (token sequences) or points (point clouds); default: "
                        "its dataset.json's \"modality\" (a root without one holds images); must be what --arch "
                        "takes", group, choices=MODALITY_NAMES)


def split_option():
    return option("train", "training split", "data")


def val_split_option():
    return option("val", "validation split ('none' to skip validation)", "data")


def augment_option():
    return option("auto", "training transform: standard (square resize to 256 for 224 px, random crop, h-flip), "
                          "heavy (the supplement's), none (resize to S×S only); auto = the original code's choice "
                          "for the dataset (from its dataset.json): none for CUB, standard for VOC, ILSVRC and "
                          "the embedded data", "data", choices=AUGMENT_CHOICES)


def workers_option():
    return option(0, "DataLoader worker processes", "data", check=NONNEGATIVE_INT, **RUNTIME)


# ---- run ----------------------------------------------------------------------------------------
def out_option():
    return option(None, "run folder to write", "run", type=Path, required=True, **RUNTIME)


def checkpoints_option():
    return option(["paper"], "epochs to save as <e>.pth.tar: integers, 'paper' (0 2 5 10 ... 150, scaled to "
                             "--epochs) or 'all'", "run", nargs="+", metavar="E")


def save_optimizer_option():
    return option(False, "also store the optimizer state in every <e>.pth.tar (≈ doubles a VGG-16 checkpoint to "
                         "1.1 GB); --resume does not need it: it reads the run's own <name>_state.pth.tar", "run",
                  action="store_true", **RUNTIME)


def seed_option():
    return option(0, "seed of initialisation, shuffling and augmentation", "run", check=SEED)


def device_option(group: str = "run"):
    return option("auto", DEVICE_HELP, group, **RUNTIME)


def threads_option(group: str = "run"):
    return option(None, "torch's CPU threads (default: auto: OMP_NUM_THREADS where set; else the physical cores, "
                        "shared out among the processes running at once: torchrun's ranks on this node or the jobs "
                        "of a parallel make, at least 1 each; see docs/performance.md); run.json records the count "
                        "used.  Results depend on it slightly on the CPU (float rounding), not on a GPU",
                  group, check=POSITIVE_INT, metavar="N", **RUNTIME)


def deterministic_option(group: str = "run", what: str = "use deterministic algorithms (slower on CUDA)"):
    return option(False, what, group, action="store_true", **RUNTIME)


def resume_option(what: str = "continue the run in --out from its last finished epoch"):
    return option(False, what, "run", action="store_true", **RUNTIME)


def overwrite_option(what: str = "delete the run in --out and start again", group: str = "run"):
    return option(False, what, group, action="store_true", **RUNTIME)


def tensorboard_option():
    return option(None, "also log loss, accuracy, learning rate and the weight distances per epoch as TensorBoard "
                        "scalars in DIR (needs the optional 'tensorboard' package)", "run", type=Path, metavar="DIR",
                  **RUNTIME)


def progress_option(group: str = "run", what: str = "no progress bars (they are plain lines anyway when stderr is "
                                                   "not a terminal)"):
    return option(True, what, group, names=("--no-progress",), action="store_false", **RUNTIME)


def debug_option():
    return option(False, "show the full traceback instead of a one-line error", "options", action="store_true",
                  **RUNTIME)


# the fields of both training stages' configs, in this order after each stage's own: name → (annotation, field)
TRAINING_FIELDS = {
    "data": ("Path | None", data_option), "modality": ("str | None", modality_option), "split": ("str", split_option), "val_split": ("str", val_split_option),
    "augment": ("str", augment_option), "workers": ("int", workers_option), "out": ("Path | None", out_option),
    "checkpoints": ("list[str]", checkpoints_option), "save_optimizer": ("bool", save_optimizer_option),
    "seed": ("int", seed_option), "device": ("str", device_option), "threads": ("int | None", threads_option),
    "deterministic": ("bool", deterministic_option),
    "resume": ("bool", resume_option), "overwrite": ("bool", overwrite_option),
    "tensorboard": ("Path | None", tensorboard_option), "progress": ("bool", progress_option),
}


def with_defaults(name: str, description: str, **defaults):
    """``(get_args_parser, main)`` of the stage ``name`` (``"train_net"``) with some defaults changed: a thin entry
    point (the supplement's) whose every flag is the stage's own and may still be overridden."""
    from kdq.function.stages import stage as stage_module

    stage = stage_module(name)

    def get_args_parser():
        parser = stage.get_args_parser()
        parser.description = description
        parser.set_defaults(**defaults)
        return parser

    return get_args_parser, stage.main
