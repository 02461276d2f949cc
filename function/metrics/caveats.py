"""What a report must say before its verdicts can be believed (docs/method.md §3, "Verdicts"): how the nets behind
the table trained (a teacher at chance, a distillation that diverged, a student far weaker than the label net) and
every setting of the runs behind it that is not the paper's.

Both read the runs' ``run.json`` (and a distillation's ``distill_log.json``); nothing here changes a number.
The paper's settings are kdq's defaults (kdq's defaults are the paper's and the original code's: the fidelity rule
of docs/original-code.md), so "not the paper's" is "not the stage's default", read from each stage's config.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdq.function.io.rundir import read_run_json

CHANCE_MARGIN = 5.0  # a teacher within this many points (top-1 %) of chance has learned (almost) nothing
WEAK_STUDENT_GAP = 10.0  # a student this many points (top-1 %) below the label net is not the paper's comparison
# recorded settings that are not part of the method's setting: where files go, how a run executes, which data and
# net it reads (said elsewhere in the report), and values resolved from other inputs (their default is "auto")
NOT_METHOD = frozenset({
    "out", "resume", "overwrite", "debug", "device", "workers", "progress", "no_progress", "log_interval",
    "batch_images", "sample_chunk", "compile", "cudnn_benchmark", "channels_last", "deterministic", "tensorboard",
    "save_optimizer", "data", "split", "val_split", "seed", "checkpoints", "checkpoint_root", "teacher_checkpoint",
    "arch", "teacher_arch", "taps", "teacher_taps", "image_size", "teacher_image_size", "teacher_format", "layer",
    "augment", "dropout", "foreground", "missing_mask", "mask_pad", "pic_seed", "lam", "finetune_lr", "pretrained",
    "keep_pretrained_head", "effective_start", "threads"})
METHOD_STAGES = ("train_net", "distillation", "train_sigma")  # the stages whose settings are the method's
PAPER_ARCHS = frozenset({"alexnet", "vgg11", "vgg16", "vgg16_bn", "vgg19", "resnet18", "resnet50", "resnet101",
                         "resnet152"})
PAPER_DATASETS = frozenset({"cub", "voc", "ilsvrc"})
PAPER_MODALITY = "image"  # the CVPR paper's inputs (the journal version's tokens and points are kdq's carry-over)


def stage_defaults(stage: str) -> dict[str, Any]:
    """Every setting's default of a stage (``"train_net"``): its config's, the paper's setting."""
    from kdq.function.sigma.config import SigmaRunConfig
    from kdq.function.train.config import TRAINING_CONFIGS

    return {**TRAINING_CONFIGS, "train_sigma": SigmaRunConfig}[stage].defaults()


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, (int, float)) and isinstance(default, (int, float)) and not isinstance(value, bool):
        return float(value) == float(default)
    return value == default


def setting_differences(record: dict[str, Any]) -> list[str]:
    """``--flag value (paper: default)`` for every method setting of one run.json that is not its stage's
    default (λ against the family's λ of method.md §2)."""
    stage = record.get("stage")
    settings = record.get("settings")
    if stage not in METHOD_STAGES or not isinstance(settings, dict):
        return []
    defaults = stage_defaults(stage)
    out = []
    for key, value in settings.items():
        if key == "modality":  # the flag's default is "the dataset's": the paper's data are images
            if value not in (None, PAPER_MODALITY):
                out.append(f"--modality {value} (paper: {PAPER_MODALITY})")
            continue
        if key in NOT_METHOD or key not in defaults or _same(value, defaults[key]):
            continue
        out.append(f"--{key.replace('_', '-')} {_text(value)} (paper: {_text(defaults[key])})")
    lam = settings.get("lam")
    family = (record.get("model") or {}).get("family")
    if stage == "train_sigma" and lam is not None and family is not None:
        from kdq.models import family_defaults

        paper = family_defaults(family).lam
        if not _same(lam, paper):
            out.append(f"--lambda {_text(lam)} (paper: {_text(paper)} for {family})")
    return out


def _text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def read_log(path: Path) -> Any:
    """A training log (a JSON list), or None when it is missing or unreadable (a caveat never stops the report)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def teacher_record(distil_record: dict[str, Any]) -> dict[str, Any]:
    """The run.json of the training run a distillation's teacher checkpoint lies in ({} when unknown)."""
    checkpoint = (distil_record.get("teacher") or {}).get("checkpoint") or \
        (distil_record.get("settings") or {}).get("teacher_checkpoint")
    if not isinstance(checkpoint, str):
        return {}
    return read_run_json(Path(checkpoint).parent)


def final_accuracy(record: dict) -> float | None:
    """A training run's final validation top-1 (%) as its run.json records it (None when it does not)."""
    for value in (record.get("final_val_acc1"), (record.get("final") or {}).get("val_acc1")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def chance_level(record: dict) -> float | None:
    """Top-1 (%) of a uniform guess over the run's classes (None when it records none)."""
    classes = record.get("classes")
    if isinstance(classes, list) and classes:
        return 100.0 / len(classes)
    n = record.get("num_classes")
    return 100.0 / n if isinstance(n, int) and n > 0 else None


def near_chance(record: dict) -> str | None:
    """Why a trained net is at chance (its final val top-1 within :data:`CHANCE_MARGIN` points), or None."""
    acc, chance = final_accuracy(record), chance_level(record)
    if acc is None or chance is None or acc > chance + CHANCE_MARGIN:
        return None
    return f"final validation top-1 {acc:.1f} % against a chance level of {chance:.1f} %"


def phase1_divergence(run: Path) -> tuple[str, str] | None:
    """What went wrong in a feature distillation's phase 1 (:func:`~kdq.function.train.distill.phase1_trend` of its
    ``distill_log.json``: ``("diverged" | "flat", detail)``), or None."""
    log = read_log(Path(run) / "distill_log.json")
    if not isinstance(log, list):
        return None
    from kdq.function.train.distill import phase1_trend

    return phase1_trend(log)


def training_warnings(label: dict[Path, dict], distil: dict[Path, dict]) -> list[str]:
    """Warnings about how the nets behind a comparison trained (each net's training runs → their run.json): a
    teacher near chance, a diverged phase 1, a student far weaker than the label net (each run named)."""
    out = []
    teachers: dict[str, str] = {}
    for run, record in distil.items():
        teacher = teacher_record(record)
        why = near_chance(teacher) if teacher else None
        if why:
            teachers.setdefault(str((record.get("teacher") or {}).get("checkpoint")), why)
        trend = phase1_divergence(run)
        if trend and trend[0] == "diverged":
            out.append(f"the distillation {run} diverged: {trend[1]}; its student did not learn the teacher's feature")
        elif trend:
            out.append(f"the distillation {run} learned nothing in phase 1: {trend[1]}; the teacher's feature at the "
                       "layer may be (nearly) constant (a zero-initialised BatchNorm right before the tap?) or the "
                       "learning rate too small")
    out += [f"the teacher {ckpt} has learned (almost) nothing: {why}; a student distilled from it is not the "
            "paper's distil net" for ckpt, why in teachers.items()]
    for run, record in label.items():
        why = near_chance(record)
        if why:
            out.append(f"the label net {run} is at chance: {why}")
    label_acc = [a for a in map(final_accuracy, label.values()) if a is not None]
    if label_acc:
        best = max(label_acc)
        for run, record in distil.items():
            acc = final_accuracy(record)
            if acc is not None and acc < best - WEAK_STUDENT_GAP:
                out.append(f"the student {run} is far weaker than the label net (final validation top-1 {acc:.1f} % "
                           f"against {best:.1f} %): the paper compares nets of similar accuracy")
    return out


def not_paper_settings(sigma_records: dict[str, list[dict]], training_records: dict[str, list[dict]],
                       dataset_kind: str | None, n_runs: dict[str, int]) -> list[str]:
    """Every setting behind a table that is not the paper's, one line per role (sigma runs, label net, distil net,
    teacher), each difference once with how many of the role's runs share it."""
    out = []
    roles = [(f"sigma runs ({net} net)", recs) for net, recs in sigma_records.items()]
    roles += [(f"{net} net training", recs) for net, recs in training_records.items()]
    teachers = [teacher_record(r) for r in training_records.get("distil", [])]
    unique = {json.dumps(t, sort_keys=True): t for t in teachers if t}
    roles.append(("teacher training", list(unique.values())))
    for role, records in roles:
        counts: dict[str, int] = {}
        for record in records:
            for diff in setting_differences(record):
                counts[diff] = counts.get(diff, 0) + 1
        if counts:
            shown = [d if n == len(records) else f"{d} in {n} of {len(records)} runs" for d, n in counts.items()]
            out.append(f"{role}: " + ", ".join(shown))
        if role == "teacher training" and any(not (r.get("settings") or {}).get("pretrained") for r in records):
            out.append("teacher: trained from scratch (the paper's teachers start from ImageNet-pretrained weights)")
    out += snapshot_distances(training_records)
    archs = sorted({str((r.get("model") or {}).get("arch")) for recs in training_records.values() for r in recs
                    if (r.get("model") or {}).get("arch")} - PAPER_ARCHS)
    if archs:
        out.append(f"architecture: {', '.join(archs)} (the paper's: AlexNet, VGG-11/16/19, ResNet-50/101/152)")
    if dataset_kind not in PAPER_DATASETS:
        shown = {"embedded": "kdq's embedded synthetic dataset", None: "a dataset kdq did not prepare"}.get(
            dataset_kind, f"a {dataset_kind} dataset")
        out.append(f"dataset: {shown} (the paper's: CUB-200-2011, VOC 2012, ILSVRC-2013 DET)")
    return out + single_run_caveat(n_runs)


SNAPSHOTS = "snapshots"  # run.json "weight_distance" of a run whose distances come from saved checkpoints


def snapshot_distances(training_records: dict[str, list[dict]]) -> list[str]:
    """The caveat of weight distances measured between saved checkpoints (``kdq-weight-distance``, run.json
    ``"weight_distance": "snapshots"``) rather than summed over every optimizer step, one line per net."""
    out = []
    for net, records in training_records.items():
        n = sum(r.get("weight_distance") == SNAPSHOTS for r in records)
        if n:
            which = "" if n == len(records) else f" ({n} of {len(records)} runs)"
            out.append(f"{net} net weight distance{which}: from saved checkpoints (kdq-weight-distance), the distance "
                       "between consecutive snapshots, a lower bound of the per-iteration path length the paper "
                       "sums (docs/method.md §1)")
    return out


def tap_node(record: dict[str, Any], layer: str) -> str | None:
    """The graph node (or submodule) a run's run.json records as its tap at ``layer`` (``model.taps``), or None."""
    from kdq.models.external import parse_taps

    taps = (record.get("model") or {}).get("taps")
    if not isinstance(taps, str) or not taps:
        return None
    try:
        tap = parse_taps(taps).get(layer)
    except ValueError:
        return None
    return tap.node if tap is not None else None


def tap_warnings(layer: str, label: dict[Path, dict], distil: dict[Path, dict]) -> list[str]:
    """A warning for each distil sigma run (path → run.json) of the label runs' architecture that tapped ``layer`` at
    another node than the first label sigma run: their σ maps measure different features, so the comparison is
    not of like with like."""
    if not label:
        return []
    first, rec = next(iter(label.items()))
    node, arch = tap_node(rec, layer), (rec.get("model") or {}).get("arch")
    out = []
    for path, other in distil.items():
        theirs = tap_node(other, layer)
        if node and theirs and theirs != node and (other.get("model") or {}).get("arch") == arch:
            out.append(f"the sigma runs tapped {layer} at different nodes (--label-sigma {first}: {node}; "
                       f"--distil-sigma {path}: {theirs}): their σ maps measure different features; fit both at "
                       "the same tap (train_sigma --taps)")
    return out


def single_run_caveat(n_runs: dict[str, int]) -> list[str]:
    """The caveat of a comparison with one training run of a net: its intervals cover image sampling only."""
    singles = [net for net, n in n_runs.items() if n == 1]
    if not singles:
        return []
    return [f"one training run of the {' and the '.join(singles)} net: the intervals cover image sampling only, not "
            "training randomness (give several runs per net, each trained with another --seed)"]
