"""The typed configs of the training stages: :class:`TrainConfig` (train_net) and :class:`DistillConfig`
(distillation).  Their shared fields come from :mod:`kdq.function.train.options` (each written once there); a
field's flag is ``--<name with dashes>`` unless it says otherwise.  Defaults are docs/method.md §1's."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdq.function.archs import arch_option, image_size_option, taps_option
from kdq.function.checks import LEVEL, NONNEGATIVE_INT, POSITIVE, Interval
from kdq.function.config import StageConfig, option
from kdq.function.train import options as o
from kdq.models import LAYERS

MODEL = "model"
OPTIMISATION = "optimisation (docs/method.md §1 defaults)"
TEACHER, STUDENT, PHASE1 = "teacher", "student", "phase 1: distillation"
PHASE2 = "phase 2: fine-tuning the layers above --layer on labels"


def training_stage(cls: type) -> type:
    """``@dataclass(frozen=True)`` of a training stage's config, with the fields both stages share (data, run:
    :data:`~kdq.function.train.options.TRAINING_FIELDS`) after its own."""
    for name, (annotation, make) in o.TRAINING_FIELDS.items():
        cls.__annotations__[name] = annotation
        setattr(cls, name, make())
    return dataclass(frozen=True)(cls)


@training_stage
class TrainConfig(StageConfig):
    """train_net: a teacher or a label net trained on labels (and the shared data and run fields)."""

    debug: bool = o.debug_option()
    arch: str | None = arch_option(MODEL)
    taps: str | None = taps_option(MODEL)
    image_size: int | None = image_size_option(MODEL)
    pretrained: Path | None = option(None, "local torchvision-format state dict for the backbone (never downloaded); "
                                           "the head starts fresh (VGG/AlexNet: fc1, fc2 and fc3; ResNets: the extra "
                                           "block and the head; other models: the fc3 tap's module), as the original "
                                           "code", MODEL, type=Path)
    keep_pretrained_head: bool = option(False, "with --pretrained, take fc1 and fc2 from the file too (only fc3 "
                                               "starts fresh)", MODEL, action="store_true")
    dropout: float | None = option(None, "dropout of the fc head of registry architectures (default: the arch's 0.5)",
                                   MODEL, check=o.DROPOUT)
    epochs: int = o.epochs_option(OPTIMISATION, "training epochs", growable=True)
    lr: float = o.lr_option(OPTIMISATION, 1e-3, "; the original's default, whose notes suggest 1e-2 for VGG and 1e-1 "
                                                "for ResNets from scratch, 1e-3 and 1e-2 fine-tuning pretrained ones "
                                                "(each log-spaced down one decade)")
    lr_schedule: str = o.lr_schedule_option(OPTIMISATION, "logspace")
    lr_down: float = o.lr_down_option(OPTIMISATION)
    batch_size: int = o.batch_size_option(OPTIMISATION)
    momentum: float = o.momentum_option(OPTIMISATION)
    weight_decay: float = o.weight_decay_option(OPTIMISATION)

    GROUPS = (MODEL, OPTIMISATION, "data", "run")


@training_stage
class DistillConfig(StageConfig):
    """distillation: a student regressing a frozen teacher's feature at one layer, then fine-tuned on labels (and
    the shared data and run fields)."""

    debug: bool = o.debug_option()
    teacher_checkpoint: Path | None = option(None, "the teacher's weights: a train_net checkpoint (or see "
                                                   "--teacher-format)", TEACHER,
                                             names=("--teacher_checkpoint", "--teacher-checkpoint"), type=Path,
                                             required=True)
    teacher_arch: str | None = arch_option(TEACHER, "the teacher", "the teacher's run (its folder's run.json)")
    teacher_taps: str | None = taps_option(TEACHER, "the teacher's run (its folder's run.json)")
    teacher_image_size: int | None = image_size_option(TEACHER, "the teacher's run (its folder's run.json)")
    teacher_format: str = option("kdq", "kdq: a train_net / original-code checkpoint (net.* keys); torchvision: a "
                                        "torchvision state dict of the whole model (features.*, classifier.*)",
                                 TEACHER, choices=o.TEACHER_FORMATS)
    teacher_mode: str = option("eval", "mode of the frozen teacher: eval (the original calls teacher_model.eval()) "
                                       "or train (dropout on, BatchNorm on batch statistics without updating them)",
                               TEACHER, choices=("eval", "train"))
    arch: str | None = arch_option(STUDENT, "the student")
    taps: str | None = taps_option(STUDENT, "the teacher's run, for a student of the teacher's architecture,")
    image_size: int | None = image_size_option(STUDENT, "the teacher's run, for a student of the teacher's "
                                                        "architecture,")
    layer: str | None = option(None, "layer whose pre-activation output is distilled (required for --method "
                                     "feature; hinton distils the logits, fc3)", STUDENT, choices=LAYERS)
    dropout: float | None = option(None, "dropout of the student's fc head (registry architectures; default: the "
                                         "arch's 0.5)", STUDENT, check=o.DROPOUT)
    method: str = option("feature", "feature: MSE on the layer's feature (the paper); hinton: logit KD (Hinton et "
                                    "al. 2015)", STUDENT, choices=("feature", "hinton"))
    adapter: bool = option(False, "learn a 1x1 conv (conv features) or linear map (fc features) on the student "
                                  "side, so a student whose layer has another width can regress the teacher's",
                           STUDENT, action="store_true")
    temperature: float = option(4.0, "hinton: softmax temperature T", STUDENT, check=POSITIVE)
    alpha: float = option(0.9, "hinton: weight of the soft term: α·T²·KL(teacher‖student) + (1−α)·CE", STUDENT,
                          check=Interval(0, 1))
    epochs: int = o.epochs_option(PHASE1, "distillation epochs")
    lr: float = o.lr_option(PHASE1, 0.01, " of phase 1 (the original's notes suggest 1e-4 to 1e-3 by layer for VGG; "
                                          "its argparse default, 1, belonged to its last ResNet experiment)")
    lr_schedule: str = o.lr_schedule_option(PHASE1, "constant")
    lr_down: float = o.lr_down_option(PHASE1)
    batch_size: int = o.batch_size_option(PHASE1, "global batch size of both phases")
    momentum: float = o.momentum_option(PHASE1, " of both phases")
    weight_decay: float = o.weight_decay_option(PHASE1, " of both phases")
    finetune_epochs: int = option(100, "fine-tuning epochs (0: none)", PHASE2, check=o.EPOCHS_OR_ZERO)
    finetune_lr: float | None = option(None, "learning rate (default by family, kdq.models.FAMILIES: 1e-3 "
                                             "vgg/alexnet and others, 1e-2 resnet)", PHASE2, check=POSITIVE)
    finetune_factor: float = option(0.3, "ReduceLROnPlateau factor", PHASE2, check=LEVEL)
    finetune_patience: int = option(10, "ReduceLROnPlateau patience (epochs)", PHASE2, check=NONNEGATIVE_INT)
    frozen_mode: str = option("train", "mode of the frozen layers in phase 2: train (the original's model.train(): "
                                       "dropout and BatchNorm batch statistics run there, their weights stay fixed) "
                                       "or eval (they compute exactly what phase 1 left, BatchNorm statistics "
                                       "included)", PHASE2, choices=("train", "eval"))

    GROUPS = (TEACHER, STUDENT, PHASE1, PHASE2, "data", "run")


TRAINING_CONFIGS = {"train_net": TrainConfig, "distillation": DistillConfig}  # by the stage run.json records
