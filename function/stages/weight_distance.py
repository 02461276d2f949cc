"""Weight distances from another trainer's checkpoints: a folder of snapshots in, a run the sigma and metrics stages read out.

    kdq-weight-distance --checkpoints ckpts/ --arch torchvision:resnet18 --taps conv=layer4.1.conv2,fc3=fc \\
        --out runs/label

Each file in ``--checkpoints`` (``*.pth``, ``*.pt``, ``*.pth.tar``, ``*.tar``, ``*.ckpt``, ``*.bin``) is loaded
safely (``weights_only=True``) and its model weights found: the file itself when it is a state dict, else the entry
``--key`` names (``auto`` tries ``state_dict`` (Lightning), ``model`` (torchdistill), ``model_state_dict``, ``net``,
``module``, ``ema``, in that order).  Keys lose ``--prefix`` (``auto``: ``module.``, and a first component every key
shares, e.g. Lightning's ``model.``, when the keys do not fit the model as they are).  A checkpoint's epoch is its
``epoch`` entry, else the last number in its file name, plus ``--epoch-offset`` (``1`` for trainers that count
finished epochs from 0, as Lightning does).

Writes ``<out>/weight_diff.npy`` (4, E+1), ``<out>/<e>.pth.tar`` (each snapshot's weights in kdq's format, so
``train_sigma --checkpoint_root <out>`` fits them) and ``run.json`` (``"weight_distance": "snapshots"``).

The paper's weight distance sums ‖Δw‖ over every optimizer step; snapshots only give the distance between
consecutive saved checkpoints, a lower bound of that path length (docs/method.md §1): ``weight_diff[l, e_k] =
‖w(e_k) − w(e_{k−1})‖ / ‖w(e_0)‖`` at each saved epoch ``e_k``, 0 at the epochs between, ``e_0`` (the first
snapshot) the reference.  The metrics report lists it among the settings that are not the paper's.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from kdq.function.cli import Parser, UserError, positive_int, run

SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")
AUTO_KEYS = ("state_dict", "model", "model_state_dict", "net", "module", "ema")  # --key auto, in this order
STAGE = "weight_distance"
NUMBER = re.compile(r"\d+")


def get_args_parser() -> argparse.ArgumentParser:
    from kdq.function.archs import REGISTRY_HELP

    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=Path, required=True, dest="folder",  # run.json's "checkpoints": epochs
                   help="folder of another trainer's checkpoints")
    p.add_argument("--arch", required=True, help="architecture of the net: " + REGISTRY_HELP.format(
        names="see kdq-train-net --help"))
    p.add_argument("--taps", default=None, metavar="LAYER=MODULE[:WEIGHT],...",
                   help="the taps (conv, fc1, fc2, fc3) and the weight whose distance is recorded for each, as in "
                        "kdq-train-net; their rows of weight_diff.npy are filled, the others NaN")
    p.add_argument("--image-size", type=positive_int, default=None, metavar="S", help="input side S, as in kdq-train-net")
    p.add_argument("--key", default="auto",
                   help=f"the checkpoint entry holding the state dict (auto: the file itself, else "
                        f"{', '.join(AUTO_KEYS)})")
    p.add_argument("--prefix", default="auto",
                   help="key prefix to strip, e.g. 'model.' (Lightning); with a prefix given, keys without it are "
                        "dropped (auto: 'module.', and a first component all keys share when they do not fit)")
    p.add_argument("--epoch-offset", type=int, default=0,
                   help="added to each checkpoint's epoch (1 for a trainer whose epoch 0 is the first finished one)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="classes of the net's head (default: the rows of its fc3 weight, or what the file records)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier kdq-weight-distance run at --out")
    return p


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoint files of ``folder`` (by :data:`SUFFIXES`), sorted by name; a UserError when there are none."""
    if not folder.is_dir():
        raise UserError(f"--checkpoints: {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("."))
    if len(files) < 2:
        raise UserError(f"--checkpoints: {folder} holds {len(files)} checkpoint file(s) ({', '.join(SUFFIXES)}); "
                        "a weight distance needs at least two")
    return files


def weights_entry(obj: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """The state dict inside a loaded checkpoint: the entry ``key``, or with ``auto`` the dict itself when it holds
    tensors only, else the first of :data:`AUTO_KEYS` that holds a dict of tensors."""
    import torch

    def tensors(value):
        return isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values())

    if key != "auto":
        if not tensors(obj.get(key)):
            raise UserError(f"--key {key}: {path} has no state dict under {key!r} (its entries: "
                            f"{', '.join(map(str, list(obj)[:8]))})")
        return obj[key]
    if tensors(obj):
        return obj
    for name in AUTO_KEYS:
        if tensors(obj.get(name)):
            return obj[name]
    raise UserError(f"--checkpoints: {path} holds no state dict (none of its entries "
                    f"{', '.join(map(str, list(obj)[:8]))} is a dict of tensors); name it with --key")


def strip_prefix(sd: dict[str, Any], prefix: str, own: set[str]) -> dict[str, Any]:
    """``sd`` with ``prefix`` removed from its keys (keys without it dropped); with ``auto``: ``module.`` removed, then,
    when the keys do not fit ``own`` (the model's keys), a first dotted component that every key shares."""
    if prefix != "auto":
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if set(sd) == own or len({k.split(".", 1)[0] for k in sd}) != 1 or not all("." in k for k in sd):
        return sd
    stripped = {k.split(".", 1)[1]: v for k, v in sd.items()}
    return stripped if set(stripped) == own else sd


def epoch_of(obj: dict[str, Any], path: Path, offset: int) -> int:
    """A checkpoint's epoch: its ``epoch`` entry, else the last number in its file name; plus ``offset``."""
    epoch = obj.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        numbers = NUMBER.findall(path.name.split(".")[0])
        if not numbers:
            raise UserError(f"--checkpoints: {path} records no epoch (no 'epoch' entry, no number in its name)")
        epoch = int(numbers[-1])
    if epoch + offset < 0:
        raise UserError(f"--epoch-offset {offset}: {path} would be epoch {epoch + offset}")
    return epoch + offset


def read_snapshots(args, info) -> tuple[dict[int, dict], dict[int, Path], int]:
    """``{epoch: state dict}`` of every checkpoint (each checked to fit the architecture), ``{epoch: file}`` and the
    number of classes."""
    import torch

    from kdq.function.io.checkpoint import check_fits, load_checkpoint, num_classes_in

    fc3 = info.taps["fc3"].weight if "fc3" in info.taps else None
    with torch.random.fork_rng(devices=[]):
        probe = info.build(args.num_classes or 2)  # its keys do not depend on the classes
    own = set(probe.state_dict())
    states, sources, model, classes = {}, {}, None, args.num_classes
    for path in checkpoint_files(args.folder):
        obj = load_checkpoint(path, "--checkpoints")
        epoch = epoch_of(obj, path, args.epoch_offset)
        if epoch in sources:
            raise UserError(f"--checkpoints: {sources[epoch]} and {path} are both epoch {epoch}; keep one of them")
        sd = strip_prefix(weights_entry(obj, args.key, path), args.prefix, own)
        if model is None:
            classes = classes or num_classes_in(obj, sd, fc3)
            if classes is None and fc3 is not None:  # its keys do not fit: say which
                check_fits(probe, sd, info.name, f"--checkpoints: {path}")
            if classes is None:
                raise UserError(f"--num-classes is needed: {path} records none and {info.name} has no fc3 tap to "
                                "read it from")
            with torch.random.fork_rng(devices=[]):
                model = info.build(classes)
        check_fits(model, sd, info.name, f"--checkpoints: {path}")
        states[epoch], sources[epoch] = sd, path
    order = sorted(states)
    return {e: states[e] for e in order}, {e: sources[e] for e in order}, classes


def main(args: argparse.Namespace) -> None:
    from kdq.function.archs import model_record, resolve_arch
    from kdq.function.checks import CheckError
    from kdq.function.io.atomic import save_npy
    from kdq.function.io.checkpoint import checkpoint_path, save_checkpoint
    from kdq.function.io.rundir import RunRecord, prepare_out
    from kdq.function.train.weight_distance import snapshot_table

    info = resolve_arch(args.arch, args.taps, args.image_size)
    states, sources, classes = read_snapshots(args, info)
    weights = {layer: tap.weight for layer, tap in info.taps.items()}
    try:
        table = snapshot_table(states, weights)
    except CheckError as exc:
        raise UserError(f"--checkpoints: the first snapshot (epoch {next(iter(states))}): {exc}") from None
    prepare_out(args.out, False, args.overwrite, STAGE)
    epochs = list(states)
    note = (f"weight distances between consecutive snapshots (epochs {' '.join(map(str, epochs))}), relative to "
            f"epoch {epochs[0]}: a lower bound of the per-iteration path length (docs/method.md §1)")
    record = RunRecord(args.out, STAGE, args, {"model": model_record(info), "checkpoints": epochs,
                                               "num_classes": classes, "weight_distance": "snapshots",
                                               "reference_epoch": epochs[0],
                                               "sources": {str(e): str(p) for e, p in sources.items()},
                                               "notes": [note]})
    with record.running():
        for epoch, sd in states.items():
            save_checkpoint(checkpoint_path(args.out, epoch), {"state_dict": sd, "epoch": epoch, "arch": info.name,
                                                               "num_classes": classes, "source": str(sources[epoch])})
        save_npy(args.out / "weight_diff.npy", table)
    record.save("complete")
    print(f"weight distance: {len(epochs)} snapshots (epochs {epochs[0]}..{epochs[-1]}), rows "
          f"{', '.join(weights)} -> {args.out / 'weight_diff.npy'}")


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
