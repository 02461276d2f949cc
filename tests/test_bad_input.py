"""The bad-input catalogue (issue 10): every case, across the four stage scripts and the preparers, ends with
exit status 2 and one error line that names the problem's flag, no traceback, and no output written.

The inputs are real tiny runs (a label net, a distilled student, the sigma runs of both) and damaged
copies of their files: truncated checkpoints and npy files, NaN maps, a malicious pickle, an architecture
that does not fit, grids and layers that do not match.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdq.function.sigma.selection import draw_order
from kdq.models import build_model
from tests.helpers import run_script

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING) ")
TRAIN = ("--arch", "vgg_tiny", "--batch-size", 4, "--lr", 0.02, "--device", "cpu", "--val-split", "val")
SIGMA = ("--arch", "vgg_tiny", "--layer", "fc1", "--split", "train", "--pic-num", 4, "--effect-num", 4,
         "--samples", 2, "--steps", 3, "--break-steps", 1, "--grid", 4, "--effective-rule", "off", "--no-progress",
         "--device", "cpu")
PWNED = "kdq_pwned"


class Exploit:
    """Unpickling this runs a shell command: what a checkpoint from a stranger could hold."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """Good tiny runs of every stage plus damaged files made from them."""
    root = tmp_path_factory.mktemp("inputs")
    data = ("--data", tiny_data)
    label, distil = root / "label", root / "distil"
    assert run_script("train_net/train_net.py", *TRAIN, *data, "--split", "train", "--epochs", 2,
                      "--checkpoints", 0, 1, 2, "--out", label) == 0
    assert run_script("distillation/distillation.py", "--teacher_checkpoint", label / "2.pth.tar",
                      "--teacher-arch", "vgg_tiny", *TRAIN, *data, "--split", "train", "--layer", "fc1",
                      "--epochs", 2, "--finetune-epochs", 1, "--checkpoints", 0, 1, 2, "--out", distil) == 0
    for net in ("label", "distil"):
        assert run_script("sigma/train_sigma.py", "--checkpoint_root", root / net, *SIGMA, *data,
                          "--out", root / f"sigma_{net}") == 0
    bad = root / "bad"
    bad.mkdir()
    good = (label / "2.pth.tar").read_bytes()
    (bad / "truncated.pth.tar").write_bytes(good[: len(good) // 2])
    (bad / "text.pth").write_text("not a checkpoint")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit(root / PWNED)}, bad / "exploit.pth.tar")
    torch.save({"state_dict": build_model("resnet_tiny", 4).state_dict()}, bad / "resnet.pth.tar")
    shutil.copytree(label, bad / "label_truncated")  # a checkpoint run with one truncated epoch
    (bad / "label_truncated" / "1.pth.tar").write_bytes(good[:1000])
    (bad / "empty_run").mkdir()
    shutil.copytree(root / "sigma_label", bad / "sigma_truncated")
    first = sorted((bad / "sigma_truncated").glob("img_*_effect"))[0] / "npy_files" / "best_sigma_entropy.npy"
    first.write_bytes(first.read_bytes()[:60])
    # (a NaN σ* map is not an error: that image is skipped and counted, see test_find_knowledge)
    shutil.copytree(label, bad / "label_nan")  # weight distances that diverged
    wd = np.load(label / "weight_diff.npy")
    np.save(bad / "label_nan" / "weight_diff.npy", np.full_like(wd, np.nan))
    shutil.copytree(root / "sigma_distil", bad / "sigma_grid2")  # same run recorded with another grid
    for f in (bad / "sigma_grid2").glob("img_*/npy_files/best_sigma_entropy.npy"):
        np.save(f, np.load(f)[..., :2, :2])
    (bad / "a_file").write_text("x")
    (bad / "log.csv").write_text("epoch,loss\n1,0.5\n")  # a text file the unpickler chokes on (IndexError)
    # the weight distances NaN, and a sigma run that records that training run (so the NaN check is what refuses)
    shutil.copytree(root / "sigma_label", bad / "sigma_of_label_nan")
    edit_json(bad / "sigma_of_label_nan" / "run.json", lambda d: d["settings"].update(
        checkpoint_root=str(bad / "label_nan")))
    shutil.copytree(label, bad / "label_negative")
    np.save(bad / "label_negative" / "weight_diff.npy", -np.abs(wd))
    shutil.copytree(root / "sigma_label", bad / "sigma_of_label_negative")
    edit_json(bad / "sigma_of_label_negative" / "run.json", lambda d: d["settings"].update(
        checkpoint_root=str(bad / "label_negative")))
    # checkpoints with odd contents
    for name, change in {"label_arch_list": lambda c: c.update(arch=["vgg_tiny"]),
                         "label_nan_weights": lambda c: c["state_dict"]["net.features.0.weight"].fill_(float("nan")),
                         "label_complex_weights": lambda c: c["state_dict"].update(
                             {"net.features.0.weight": c["state_dict"]["net.features.0.weight"].to(torch.complex64)})
                         }.items():
        shutil.copytree(label, bad / name)
        for ckpt_path in (bad / name).glob("[0-9]*.pth.tar"):
            ckpt = torch.load(ckpt_path, weights_only=True)
            change(ckpt)
            torch.save(ckpt, ckpt_path)
    shutil.copytree(label, bad / "label_model_is_text")  # run.json with a field of the wrong type
    edit_json(bad / "label_model_is_text" / "run.json", lambda d: d.update(model="vgg_tiny"))
    # sigma files: a header claiming a huge array, complex maps, a name list that is not UTF-8
    shutil.copytree(root / "sigma_label", bad / "sigma_huge_header")
    huge = sorted((bad / "sigma_huge_header").glob("img_*_effect"))[0] / "npy_files" / "best_sigma_entropy.npy"
    huge.write_bytes(npy_with_header((10 ** 6, 1, 4, 4), huge.read_bytes()))
    shutil.copytree(root / "sigma_label", bad / "sigma_complex")
    for f in (bad / "sigma_complex").glob("img_*/npy_files/best_sigma_entropy.npy"):
        np.save(f, np.load(f).astype(np.complex128))
    shutil.copytree(root / "sigma_label", bad / "sigma_latin1_names")
    names = bad / "sigma_latin1_names" / "full_name_list.txt"
    names.write_bytes(names.read_bytes() + "caf\u00e9/x.png\n".encode("latin-1"))
    # datasets with one unusable file among the images the stages read (the first image the sigma stage draws)
    datasets = tmp_path_factory.mktemp("bad_data")
    drawn = sorted(p.relative_to(tiny_data / "train") for p in (tiny_data / "train").rglob("*.png"))
    first = drawn[draw_order(len(drawn), 4, 0)[0]]
    damaged = {"image_truncated": lambda p: p.write_bytes(p.read_bytes()[:60]),
               "image_empty": lambda p: p.write_bytes(b""),
               "image_not_an_image": lambda p: p.write_text("this is not a picture"),
               "image_bomb": lambda p: p.write_bytes(png_claiming(40000, 40000)),
               "image_symlink_loop": lambda p: (p.unlink(), os.symlink(p.name, p)),
               "mask_truncated": lambda p: mask_of(p).write_bytes(mask_of(p).read_bytes()[:60]),
               "mask_other_shape": lambda p: Image.new("L", (20, 32), 255).save(mask_of(p)),
               "mask_transparent": lambda p: Image.new("LA", (32, 32), (255, 0)).save(mask_of(p)),
               "name_not_utf8": lambda p: shutil.copy(p, os.fsdecode(bytes(p.parent) + b"/caf\xe9.png")),
               "name_with_newline": lambda p: shutil.copy(p, p.parent / "two\nlines.png"),
               "name_with_space": lambda p: shutil.copy(p, p.parent / " spaced.png")}
    data_roots = {}
    for kind, damage in damaged.items():
        data_roots[kind] = datasets / kind
        shutil.copytree(tiny_data, data_roots[kind], symlinks=True)
        damage(data_roots[kind] / "train" / first)
    metrics_runs = {}
    for name, extra in (("metrics", ["--no-figures"]), ("metrics_with_figures", [])):
        metrics_runs[name] = root / name
        assert run_script("sigma/find_knowledge_new.py", "--label-sigma", root / "sigma_label", "--distil-sigma",
                          root / "sigma_distil", *data, "--split", "train", "--layer", "fc1", "--bootstrap", 20,
                          *extra, "--out", root / name) == 0
    return types.SimpleNamespace(root=root, data=tiny_data, label=label, distil=distil, bad=bad,
                                 sigma_label=root / "sigma_label", sigma_distil=root / "sigma_distil",
                                 bad_data=data_roots, first=first, **metrics_runs)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def mask_of(image: Path) -> Path:
    """The mask of an image of the embedded dataset (``<root>/seg/<split>/<class>/<stem>.png``)."""
    split_root = image.parents[2]
    return split_root / "seg" / image.parents[1].name / image.parent.name / f"{image.stem}.png"


def npy_with_header(shape: tuple[int, ...], npy: bytes) -> bytes:
    """``npy`` (a float32 array file) with its header replaced by one that claims ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    data_start = npy.index(b"\n") + 1
    return buf.getvalue() + npy[data_start:]


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` pixels (a decompression bomb; the data is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


DROP = object()  # a flag value that removes the flag from a builder's defaults


def flags(argv: dict) -> list:
    """``{flag: value}`` as argv: a None value is a switch, DROP leaves the flag out."""
    return [x for kv in argv.items() if kv[1] is not DROP for x in kv if x is not None]


def train(r, out, **change):
    argv = {"--arch": "vgg_tiny", "--data": r.data, "--split": "train", "--val-split": "val", "--epochs": 1,
            "--batch-size": 4, "--device": "cpu", "--out": out, **change}
    return ("train_net/train_net.py", flags(argv))


def distil(r, out, *extra, **change):
    argv = {"--teacher_checkpoint": r.label / "2.pth.tar", "--teacher-arch": "vgg_tiny", "--arch": "vgg_tiny",
            "--data": r.data, "--split": "train", "--val-split": "val", "--layer": "fc1", "--epochs": 1,
            "--finetune-epochs": 0, "--batch-size": 4, "--device": "cpu", "--out": out, **change}
    return ("distillation/distillation.py", flags(argv) + list(extra))


def sigma(r, out, **change):
    fit = [a for a in SIGMA if a != "--no-progress"]
    argv = {"--checkpoint_root": r.label, "--data": r.data, **dict(zip(fit[::2], fit[1::2])), "--out": out,
            **change}
    return ("sigma/train_sigma.py", flags(argv) + ["--no-progress"])


def metrics(r, out, **change):
    argv = {"--label-sigma": r.sigma_label, "--distil-sigma": r.sigma_distil, "--label-run": r.label,
            "--distil-run": r.distil, "--data": r.data, "--split": "train", "--layer": "fc1", "--bootstrap": 20,
            "--no-figures": None, "--out": out, **change}
    return ("sigma/find_knowledge_new.py", flags(argv))


def prepare(r, out, kind, src, *extra):
    return ("prepare_data", [kind, "--src", src, "--out", out, *extra])


# id → (command builder (runs, out) → (script, argv), text the error line must contain: the specific message the
# case exists for, so that a case refused by an earlier, unrelated check fails)
CASES = {
    # train_net
    "train_unknown_arch": (lambda r, o: train(r, o, **{"--arch": "vgg17"}), "--arch: unknown architecture 'vgg17'"),
    "train_missing_data": (lambda r, o: train(r, o, **{"--data": r.root / "nope"}),
                           "nope does not exist or is not a directory"),
    "train_data_is_a_file": (lambda r, o: train(r, o, **{"--data": r.bad / "a_file"}),
                             "a_file does not exist or is not a directory"),
    "train_unknown_split": (lambda r, o: train(r, o, **{"--split": "nosplit"}),
                            "--split: {data}/nosplit not found (splits here: teacher, train, val"),
    "train_missing_val_split": (lambda r, o: train(r, o, **{"--val-split": "test"}),
                                "--val-split: {data}/test not found (splits here: teacher, train, val; pass one of them "
                                "or --val-split none to train without validation)"),
    "train_batch_zero": (lambda r, o: train(r, o, **{"--batch-size": 0}),
                         "argument --batch-size: must be a positive integer, got 0"),
    "train_lr_not_a_number": (lambda r, o: train(r, o, **{"--lr": "fast"}), "argument --lr: must be a number"),
    "train_lr_infinite": (lambda r, o: train(r, o, **{"--lr": "inf"}), "argument --lr: must be a finite number"),
    "train_seed_negative": (lambda r, o: train(r, o, **{"--seed": -1}),
                            "argument --seed: must be an integer in 0..2**64-1, got -1"),
    "train_seed_too_large": (lambda r, o: train(r, o, **{"--seed": 2 ** 64}),
                             "argument --seed: must be an integer in 0..2**64-1"),
    "train_momentum_negative": (lambda r, o: train(r, o, **{"--momentum": -0.9}), "argument --momentum: must be ≥ 0"),
    "train_weight_decay_negative": (lambda r, o: train(r, o, **{"--weight-decay": -1e-4}),
                                    "argument --weight-decay: must be ≥ 0"),
    "train_dropout_above_one": (lambda r, o: train(r, o, **{"--dropout": 2}),
                                "argument --dropout: must be in [0, 1), got 2"),
    "train_device_meta": (lambda r, o: train(r, o, **{"--device": "meta"}), "--device meta: choose auto, cpu"),
    "train_device_mps_missing": (lambda r, o: train(r, o, **{"--device": "mps"}),
                                 "--device mps: Apple's MPS is not available on this machine"),
    "train_checkpoint_beyond_epochs": (lambda r, o: train(r, o, **{"--checkpoints": 7}), "--checkpoints [7] outside 0..1"),
    "train_pretrained_not_a_checkpoint": (lambda r, o: train(r, o, **{"--pretrained": r.bad / "text.pth"}),
                                          "text.pth is not a torch checkpoint (truncated, damaged"),
    "train_pretrained_exploit": (lambda r, o: train(r, o, **{"--pretrained": r.bad / "exploit.pth.tar"}),
                                 "was refused by the safe loader (weights_only=True)"),
    "train_pretrained_is_a_log": (lambda r, o: train(r, o, **{"--pretrained": r.bad / "log.csv"}),
                                  "log.csv is not a torch checkpoint"),
    "train_pretrained_nan": (lambda r, o: train(r, o, **{"--pretrained": r.bad / "label_nan_weights" / "2.pth.tar"}),
                             "tensor net.features.0.weight holds 432 NaN or infinite value(s)"),
    "train_out_is_a_file": (lambda r, o: train(r, r.bad / "a_file"), "a_file exists and is not a directory"),
    "train_out_is_the_data": (lambda r, o: train(r, r.data, **{"--overwrite": None}), "is also --data"),
    "train_out_inside_the_data": (lambda r, o: train(r, r.data / "runs" / "x"), "lies inside --data"),
    "train_image_truncated": (lambda r, o: train(r, o, **{"--data": r.bad_data["image_truncated"]}),
                              "cannot be used: image {first} cannot be read"),
    "train_image_empty": (lambda r, o: train(r, o, **{"--data": r.bad_data["image_empty"]}),
                          "cannot be used: image {first} is empty (0 bytes)"),
    "train_image_not_an_image": (lambda r, o: train(r, o, **{"--data": r.bad_data["image_not_an_image"]}),
                                 "image {first} cannot be read (cannot identify image file"),
    "train_image_bomb": (lambda r, o: train(r, o, **{"--data": r.bad_data["image_bomb"]}),
                         "image {first} is too large to decode safely"),
    "train_image_symlink_loop": (lambda r, o: train(r, o, **{"--data": r.bad_data["image_symlink_loop"]}),
                                 "image {first} cannot be read (Too many levels of symbolic links)"),
    "train_name_not_utf8": (lambda r, o: train(r, o, **{"--data": r.bad_data["name_not_utf8"]}),
                            "cannot be listed one per line: '{cls}/caf\\udce9.png': its bytes are not UTF-8; rename them"),
    "train_name_with_newline": (lambda r, o: train(r, o, **{"--data": r.bad_data["name_with_newline"]}),
                                "'{cls}/two\\nlines.png': it holds a line break"),
    "train_name_with_space": (lambda r, o: train(r, o, **{"--data": r.bad_data["name_with_space"]}),
                              "'{cls}/ spaced.png': it begins or ends with a space"),
    # distillation
    "distil_missing_teacher": (lambda r, o: distil(r, o, **{"--teacher_checkpoint": r.root / "none.pth.tar"}),
                               "none.pth.tar does not exist or is not a file"),
    "distil_truncated_teacher": (lambda r, o: distil(r, o, **{"--teacher_checkpoint": r.bad / "truncated.pth.tar"}),
                                 "truncated.pth.tar is not a torch checkpoint (truncated, damaged"),
    "distil_teacher_of_other_arch": (lambda r, o: distil(r, o, **{"--teacher_checkpoint": r.bad / "resnet.pth.tar"}),
                                     "resnet.pth.tar does not fit --teacher-arch vgg_tiny: 14 missing key(s)"),
    "distil_teacher_exploit": (lambda r, o: distil(r, o, **{"--teacher_checkpoint": r.bad / "exploit.pth.tar"}),
                               "was refused by the safe loader (weights_only=True)"),
    "distil_teacher_recorded_otherwise": (lambda r, o: distil(r, o, **{"--teacher-arch": "vgg_tiny_bn"}),
                                          "--teacher-arch vgg_tiny_bn but the teacher's run"),
    "distil_teacher_nan": (lambda r, o: distil(r, o, **{"--teacher_checkpoint":
                                                        r.bad / "label_nan_weights" / "2.pth.tar"}),
                           "tensor net.features.0.weight holds 432 NaN or infinite value(s) (a diverged run?)"),
    "distil_teacher_arch_is_a_list": (lambda r, o: distil(r, o, **{"--teacher_checkpoint":
                                                                   r.bad / "label_arch_list" / "2.pth.tar"}),
                                      "records an arch that is a list, not a name"),
    "distil_unknown_layer": (lambda r, o: distil(r, o, **{"--layer": "fc9"}), "argument --layer: invalid choice: 'fc9'"),
    "distil_hinton_at_conv": (lambda r, o: distil(r, o, **{"--method": "hinton", "--layer": "conv"}),
                              "--method hinton distils the logits (fc3); --layer conv does not apply"),
    "distil_teacher_is_a_folder": (lambda r, o: distil(r, o, **{"--teacher_checkpoint": r.label}),
                                   "label does not exist or is not a file"),
    "distil_patience_negative": (lambda r, o: distil(r, o, **{"--finetune-patience": -1}),
                                 "argument --finetune-patience: must be an integer ≥ 0"),
    "distil_dropout_above_one": (lambda r, o: distil(r, o, **{"--dropout": 2}), "argument --dropout: must be in [0, 1)"),
    "distil_image_truncated": (lambda r, o: distil(r, o, **{"--data": r.bad_data["image_truncated"]}),
                               "cannot be used: image {first} cannot be read"),
    # train_sigma
    "sigma_missing_root": (lambda r, o: sigma(r, o, **{"--checkpoint_root": r.root / "none"}),
                           "--checkpoint_root: {root}/none does not exist"),
    "sigma_root_without_checkpoints": (lambda r, o: sigma(r, o, **{"--checkpoint_root": r.bad / "empty_run"}),
                                       "holds no <epoch>.pth.tar checkpoints"),
    "sigma_truncated_checkpoint": (lambda r, o: sigma(r, o, **{"--checkpoint_root": r.bad / "label_truncated"}),
                                   "1.pth.tar is not a torch checkpoint (truncated, damaged"),
    "sigma_arch_does_not_fit": (lambda r, o: sigma(r, o, **{"--arch": "resnet_tiny"}),
                                "--arch resnet_tiny but --checkpoint_root {root}/label was made with vgg_tiny"),
    "sigma_arch_recorded_otherwise": (lambda r, o: sigma(r, o, **{"--arch": "vgg_tiny_bn"}), "was made with vgg_tiny"),
    "sigma_arch_is_a_list": (lambda r, o: sigma(r, o, **{"--checkpoint_root": r.bad / "label_arch_list"}),
                             "records an arch that is a list, not a name"),
    "sigma_nan_weights": (lambda r, o: sigma(r, o, **{"--checkpoint_root": r.bad / "label_nan_weights"}),
                          "tensor net.features.0.weight holds 432 NaN or infinite value(s)"),
    "sigma_complex_weights": (lambda r, o: sigma(r, o, **{"--checkpoint_root": r.bad / "label_complex_weights"}),
                              "tensor net.features.0.weight is complex (torch.complex64); weights must be real"),
    "sigma_run_json_field_of_wrong_type": (lambda r, o: sigma(r, o, **{"--checkpoint_root":
                                                                       r.bad / "label_model_is_text"}),
                                           "field model is str \"vgg_tiny\", not dict"),
    "sigma_grid_above_the_input_size": (lambda r, o: sigma(r, o, **{"--grid": 65}),
                                        "--grid 65 is larger than the input size 64 of vgg_tiny"),
    "sigma_break_not_below_steps": (lambda r, o: sigma(r, o, **{"--break-steps": 3}),
                                    "--break-steps must be in 0..2 (below --steps), got 3"),
    "sigma_target_entropy_nan": (lambda r, o: sigma(r, o, **{"--target-entropy": "nan"}),
                                 "argument --target-entropy: must be a finite number"),
    "sigma_sigma0_overflows": (lambda r, o: sigma(r, o, **{"--sigma0": "1e400"}),
                               "argument --sigma0: must be a finite number, got 1e400"),
    "sigma_sigma0_above_one": (lambda r, o: sigma(r, o, **{"--sigma0": 5}), "argument --sigma0: must be in (0, 1]"),
    "sigma_seed_negative": (lambda r, o: sigma(r, o, **{"--seed": -3}), "argument --seed: must be an integer in 0.."),
    "sigma_pic_seed_too_large": (lambda r, o: sigma(r, o, **{"--pic-seed": 2 ** 70}),
                                 "argument --pic-seed: must be an integer in 0..2**64-1"),
    "sigma_out_is_the_checkpoints": (lambda r, o: sigma(r, r.label, **{"--resume": None}), "is also --checkpoint_root"),
    "sigma_out_holds_the_checkpoints": (lambda r, o: sigma(r, r.root, **{"--overwrite": None}), "holds --checkpoint_root"),
    "sigma_pic_num_zero": (lambda r, o: sigma(r, o, **{"--pic-num": 0}), "argument --pic-num: must be a positive integer"),
    "sigma_image_truncated": (lambda r, o: sigma(r, o, **{"--data": r.bad_data["image_truncated"]}),
                              "cannot be used: image {first} cannot be read"),
    "sigma_image_bomb": (lambda r, o: sigma(r, o, **{"--data": r.bad_data["image_bomb"]}),
                         "image {first} is too large to decode safely"),
    "sigma_mask_truncated": (lambda r, o: sigma(r, o, **{"--data": r.bad_data["mask_truncated"]}),
                             "cannot be used: mask {first_mask} cannot be read"),
    "sigma_mask_of_another_shape": (lambda r, o: sigma(r, o, **{"--data": r.bad_data["mask_other_shape"]}),
                                    "mask {first_mask} is 20x32 but its image is 32x32 (a mask must have its image's "
                                    "size or the same aspect ratio)"),
    "sigma_mask_transparent": (lambda r, o: sigma(r, o, **{"--data": r.bad_data["mask_transparent"]}),
                               "mask {first_mask} is transparent in places (LA)"),
    # find_knowledge_new
    "metrics_missing_sigma": (lambda r, o: metrics(r, o, **{"--label-sigma": r.root / "none"}),
                              "--label-sigma: {root}/none does not exist or is not a directory"),
    "metrics_truncated_npy": (lambda r, o: metrics(r, o, **{"--label-sigma": r.bad / "sigma_truncated"}),
                              "best_sigma_entropy.npy (EOF: reading array header"),
    "metrics_huge_npy_header": (lambda r, o: metrics(r, o, **{"--label-sigma": r.bad / "sigma_huge_header"}),
                                "best_sigma_entropy.npy claims shape (1000000, 1, 4, 4) (float32) but holds only"),
    "metrics_complex_maps": (lambda r, o: metrics(r, o, **{"--label-sigma": r.bad / "sigma_complex"}),
                             "best_sigma_entropy.npy holds complex128 values; expected real numbers"),
    "metrics_names_not_utf8": (lambda r, o: metrics(r, o, **{"--label-sigma": r.bad / "sigma_latin1_names"}),
                               "full_name_list.txt: line 5 is not UTF-8 text (byte 0xe9)"),
    "metrics_nan_weight_distance": (lambda r, o: metrics(r, o, **{"--label-sigma": r.bad / "sigma_of_label_nan",
                                                                  "--label-run": DROP}),
                                    "weight_diff.npy holds NaN/inf in the analysed layer's row"),
    "metrics_negative_weight_distance": (lambda r, o: metrics(r, o, **{"--label-sigma": r.bad / "sigma_of_label_negative",
                                                                       "--label-run": DROP}),
                                         "weight_diff.npy holds negative weight distances"),
    "metrics_grids_differ": (lambda r, o: metrics(r, o, **{"--distil-sigma": r.bad / "sigma_grid2"}),
                             "the sigma runs were fitted with different grids: --label-sigma 4x4 vs --distil-sigma 2x2"),
    "metrics_wrong_layer": (lambda r, o: metrics(r, o, **{"--layer": "conv"}), "was fitted at layer fc1, not conv"),
    "metrics_level_out_of_range": (lambda r, o: metrics(r, o, **{"--level": 1.5}), "--level must be in (0, 1), got 1.5"),
    "metrics_b_negative": (lambda r, o: metrics(r, o, **{"--b": -0.2}), "argument --b: must be ≥ 0"),
    "metrics_run_is_not_the_fitted_one": (lambda r, o: metrics(r, o, **{"--label-run": r.distil}),
                                          "is not the training run that --label-sigma"),
    "metrics_out_is_an_input": (lambda r, o: metrics(r, r.sigma_distil, **{"--overwrite": None}),
                                "is also --distil-sigma"),
    "metrics_out_inside_the_recorded_run": (lambda r, o: metrics(r, r.label / "metrics", **{"--label-run": DROP,
                                                                                             "--distil-run": DROP}),
                                            "lies inside the label net's training run"),
    "metrics_label_run_is_a_file": (lambda r, o: metrics(r, o, **{"--label-run": r.bad / "a_file"}),
                                    "--label-run: {root}/bad/a_file does not exist or is not a directory"),
    "metrics_mask_truncated": (lambda r, o: metrics(r, o, **{"--data": r.bad_data["mask_truncated"]}),
                               "mask {first_mask} cannot be read"),
    # preparers
    "prepare_unknown_dataset": (lambda r, o: prepare(r, o, "coco", r.root), "invalid choice: 'coco'"),
    "prepare_cub_missing_src": (lambda r, o: prepare(r, o, "cub", r.root / "none"), "--src: {root}/none does not exist"),
    "prepare_voc_src_is_a_file": (lambda r, o: prepare(r, o, "voc", r.bad / "a_file"), "a_file is not a directory"),
    "prepare_ilsvrc_src_without_layout": (lambda r, o: prepare(r, o, "ilsvrc", r.bad / "empty_run"),
                                          "is not in the expected layout"),
    "prepare_cub_threshold_out_of_range": (lambda r, o: prepare(r, o, "cub", r.root, "--mask-threshold", 300),
                                           "argument --mask-threshold: must be in [0, 254], got 300"),
}


def expected_in(line: str, template: str, r, argv: list) -> bool:
    """Whether the error line holds the case's message, the fixture's paths filled in (``{data}``: the case's
    --data)."""
    data = Path(argv[argv.index("--data") + 1]) if "--data" in argv else r.data
    text = template.format(root=r.root, data=data, cls=r.first.parts[0], first=data / "train" / r.first,
                           first_mask=data / "seg" / "train" / r.first.with_suffix(".png"))
    return text in line


def run_case(script: str, argv: list) -> int:
    try:
        return run_script(script, *argv)
    except SystemExit as exc:  # argparse errors
        return exc.code


def test_the_catalogue_is_large_enough():
    scripts = {"train", "distil", "sigma", "metrics", "prepare"}
    assert len(CASES) >= 25
    assert {name.split("_")[0] for name in CASES} == scripts


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, runs, tmp_path, capsys):
    build, expected = CASES[case]
    out = tmp_path / "out"
    script, argv = build(runs, out)
    inputs_before = snapshot(runs.root)
    capsys.readouterr()
    assert run_case(script, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1, lines
    assert "error" in lines[0] and expected_in(lines[0], expected, runs, argv), lines[0]
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    assert snapshot(runs.root) == inputs_before, "an input was changed"
    assert not (runs.root / PWNED).exists(), "the malicious pickle ran"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_debug_shows_the_traceback(runs, tmp_path):
    script, argv = train(runs, tmp_path / "out", **{"--arch": "vgg17"})
    with pytest.raises(Exception):
        run_script(script, *argv, "--debug")


# ---- an existing --out: a refusal leaves every byte of it as it was -------------------------------------------

def run_copy(src: Path, extra: dict[str, str] | None = None, status: str | None = None):
    """Make ``out`` a copy of the run ``src`` (plus ``extra`` files; run.json's status set to ``status``)."""
    def make(out: Path) -> None:
        shutil.copytree(src, out)
        for name, text in (extra or {}).items():
            (out / name).write_text(text)
        if status is not None:
            edit_json(out / "run.json", lambda d: d.update(status=status))
    return make


def unrelated_files(out: Path) -> None:
    out.mkdir()
    (out / "thesis.txt").write_text("three years of work")


def damaged_state(r):
    def make(out: Path) -> None:
        run_copy(r.label, status="interrupted")(out)
        state = torch.load(out / "train_state.pth.tar", weights_only=True)
        del state["optimizer"]
        torch.save(state, out / "train_state.pth.tar")
    return make


# id → (what --out holds (runs → maker(out)), command builder, text of the error line)
ON_EXISTING = {
    "train_overwrite_with_a_missing_pretrained": (
        lambda r: run_copy(r.label), lambda r, o: train(r, o, **{"--overwrite": None, "--pretrained": r.root / "no.pth"}),
        "--pretrained: {root}/no.pth does not exist or is not a file"),
    "train_overwrite_with_a_damaged_image": (
        lambda r: run_copy(r.label), lambda r, o: train(r, o, **{"--overwrite": None,
                                                                  "--data": r.bad_data["image_truncated"]}),
        "cannot be used: image {first} cannot be read"),
    "train_overwrite_of_a_run_holding_notes": (
        lambda r: run_copy(r.label, {"notes.txt": "mine"}), lambda r, o: train(r, o, **{"--overwrite": None}),
        "also holds files that train_net did not write (notes.txt); move them away first"),
    "train_onto_unrelated_files": (
        lambda r: unrelated_files, lambda r, o: train(r, o),
        "is not empty and holds files that are not a kdq run; use another --out"),
    "train_overwrite_of_unrelated_files": (
        lambda r: unrelated_files, lambda r, o: train(r, o, **{"--overwrite": None}),
        "holds files that are not a kdq run, not a train_net run; --overwrite replaces only a train_net run"),
    "train_onto_an_interrupted_run": (
        lambda r: run_copy(r.label, status="running"), lambda r, o: train(r, o),
        "already holds a train_net run (status: interrupted); pass --resume to continue it"),
    "train_resume_of_a_damaged_state": (
        damaged_state, lambda r, o: train(r, o, **{"--resume": None, "--epochs": 2, "--checkpoints": "0 1 2",
                                                    "--lr": 0.02}),
        "train_state.pth.tar is damaged: it has no 'optimizer'"),
    "train_resume_with_fewer_epochs": (
        lambda r: run_copy(r.label), lambda r, o: train(r, o, **{"--resume": None, "--epochs": 1, "--lr": 0.02,
                                                                  "--checkpoints": "0 1"}),
        "--epochs: 2 → 1"),
    "sigma_overwrite_of_a_training_run": (
        lambda r: run_copy(r.label), lambda r, o: sigma(r, o, **{"--checkpoint_root": r.distil, "--overwrite": None}),
        "holds a train_net run, not a train_sigma run; --overwrite replaces only a train_sigma run"),
    "sigma_overwrite_with_a_damaged_mask": (
        lambda r: run_copy(r.sigma_label), lambda r, o: sigma(r, o, **{"--overwrite": None,
                                                                         "--data": r.bad_data["mask_truncated"]}),
        "mask {first_mask} cannot be read"),
    "metrics_overwrite_with_a_missing_sigma_run": (
        lambda r: run_copy(r.metrics), lambda r, o: metrics(r, o, **{"--overwrite": None,
                                                                      "--label-sigma": r.root / "none"}),
        "--label-sigma: {root}/none does not exist or is not a directory"),
    "metrics_overwrite_of_a_report_holding_notes": (
        lambda r: run_copy(r.metrics, {"notes.md": "mine"}), lambda r, o: metrics(r, o, **{"--overwrite": None}),
        "also holds files that find_knowledge did not write (notes.md)"),
    "make_dataset_overwrite_of_unrelated_files": (
        lambda r: unrelated_files, lambda r, o: ("make_dataset", ["--out", o, "--overwrite"]),
        "holds files that are not a kdq run, not a make_dataset run"),
    "make_dataset_overwrite_of_a_dataset_holding_notes": (
        lambda r: run_copy(r.data, {"thesis.txt": "mine"}),
        lambda r, o: ("make_dataset", ["--out", o, "--overwrite"]),
        "also holds files that make_dataset did not write (thesis.txt)"),
    "make_dataset_onto_a_file": (
        lambda r: (lambda out: out.write_text("a file")),
        lambda r, o: ("make_dataset", ["--out", o, "--overwrite"]), "exists and is not a directory"),
}


@pytest.mark.parametrize("case", sorted(ON_EXISTING))
def test_a_refused_run_leaves_an_existing_out_as_it_was(case, runs, tmp_path, capsys):
    make, build, expected = ON_EXISTING[case]
    out = tmp_path / "out"
    make(runs)(out)
    script, argv = build(runs, out)
    argv = [x for a in argv for x in (a.split() if isinstance(a, str) and " " in a else [a])]  # --checkpoints 0 1
    before = tree(out)
    capsys.readouterr()
    assert run_case(script, argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]
    assert "Traceback" not in err and len(lines) == 1, lines
    assert expected_in(lines[0], expected, runs, argv), lines[0]
    assert tree(out) == before, "the existing --out was changed"
    assert not list(tmp_path.glob(".*")), "a lock or temporary file was left beside --out"


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) with its bytes."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_stage_files_cover_what_each_stage_writes(runs):
    """--overwrite replaces a folder only when it holds nothing a stage does not write: the table in rundir must
    name everything the stages really write."""
    from kdq.function.io.rundir import foreign_entries

    for folder, stage in ((runs.label, "train_net"), (runs.distil, "distillation"), (runs.sigma_label, "train_sigma"),
                          (runs.metrics_with_figures, "find_knowledge"), (runs.data, "make_dataset")):
        assert foreign_entries(folder, stage) == [], (stage, foreign_entries(folder, stage))
    assert foreign_entries(runs.label, "train_sigma") != []


# ---- one writer per --out ---------------------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_first(runs, tmp_path, capsys):
    import subprocess
    import sys

    from kdq.function.io.lock import lock_path

    out = tmp_path / "run"
    run_copy(runs.label, status="running")(out)
    before = tree(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_path(out))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ({"--resume": None}, {"--overwrite": None}, {}):
            capsys.readouterr()
            script, argv = train(runs, out, **extra)
            assert run_case(script, argv) == 2
            line = [x for x in capsys.readouterr().err.strip().splitlines() if not LOG_LINE.match(x)][-1]
            assert f"is in use by another kdq process (pid {holder.pid})" in line, line
        assert tree(out) == before
    finally:
        holder.kill()
        holder.wait()
    script, argv = train(runs, out, **{"--overwrite": None})  # the holder died: the lock is free again
    assert run_case(script, argv) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not lock_path(out).exists()
