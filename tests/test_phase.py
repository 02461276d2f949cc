"""A training phase as data (kdq.function.train.phase), the open run setup() returns, and the stages' size."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import torch
from torch import nn

from kdq.function.io.lock import release_all
from kdq.function.stages import distillation, train_net
from kdq.function.train.phase import Phase, set_learning
from kdq.function.train.stage import resolved_augment, setup
from tests.helpers import ROOT, run_script


def function_lengths(*folders: str) -> dict[str, int]:
    """Lines of every function in the Python files under ``folders`` (``path:name`` → lines)."""
    lengths = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lengths[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_library_function_is_over_80_lines_and_the_stage_mains_are_short():
    lengths = function_lengths("function", "models")
    assert {name: n for name, n in lengths.items() if n > 80} == {}
    assert lengths["function/stages/distillation.py:main"] < 60
    assert lengths["function/stages/train_net.py:main"] < 59  # 59 before the phases were data


def phase(model: nn.Module, learn: list[nn.Parameter], freeze_others: bool) -> Phase:
    return Phase(name="train", model=model, net=model, step=lambda net, x, y: (net(x).sum(), None), learn=learn,
                 loader=None, epochs=1, lr=0.1, arch="test", meta={}, freeze_others=freeze_others)


def test_a_phase_that_freezes_the_others_leaves_only_its_parameters_learning():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    set_learning(phase(model, list(model[1].parameters()), freeze_others=True))
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]
    set_learning(phase(model, list(model[0].parameters()), freeze_others=True))  # phase 2 after phase 1
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, False]


def test_a_phase_that_does_not_freeze_leaves_every_flag_as_built():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    model[0].bias.requires_grad_(False)  # e.g. a user's factory that freezes a part
    set_learning(phase(model, list(model.parameters()), freeze_others=False))
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]


TRAIN = ["--arch", "vgg_tiny", "--split", "train", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
         "--no-progress", "--seed", "7"]


def train_args(data: Path, out: Path, *extra: str):
    """train_net's settings for a one-epoch run of the tiny net into ``out``, as its parser returns them."""
    return train_net.get_args_parser().parse_args([*TRAIN, "--data", str(data), "--out", str(out), *extra])


def test_setup_opens_a_run_and_leaves_seeding_to_the_stage(tiny_data, tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    try:
        run = setup(train_args(tiny_data, tmp_path / "run"), "train_net")
        assert not run.complete and run.record is not None and run.device == torch.device("cpu")
        assert torch.equal(torch.get_rng_state(), before), "setup() drew from or reseeded torch's generator"
        run.seed()
        assert torch.initial_seed() == 7
    finally:
        release_all()


def test_setup_of_a_complete_run_says_so_instead_of_returning_none(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert run_script("train_net", *TRAIN, "--data", tiny_data, "--out", out) == 0
    try:
        args = train_args(tiny_data, out, "--resume")
        run = setup(args, "train_net", {"augment": resolved_augment(args), "modality": "image"})  # as train_net
        assert run is not None and run.complete and run.record is None
    finally:
        release_all()


@dataclasses.dataclass(frozen=True)
class Config:
    """A stand-in for a stage's typed config: attributes only, frozen."""
    method: str
    layer: str | None
    adapter: bool = False


def test_resolve_args_copies_a_config_dataclass_as_a_config():
    cfg = Config(method="hinton", layer=None)
    resolved = distillation.resolve_args(cfg)
    assert type(resolved) is Config and resolved.layer == "fc3"
    assert cfg.layer is None  # the caller's config is left as parsed


def test_resolve_args_copies_a_namespace():
    import argparse

    args = argparse.Namespace(method="hinton", layer=None, adapter=False)
    resolved = distillation.resolve_args(args)
    assert resolved.layer == "fc3" and args.layer is None and resolved is not args
