"""Typed configs: one dataclass per stage (``TrainConfig``, ``DistillConfig``, ``SigmaRunConfig``,
``MetricsConfig``) whose fields are the stage's settings.

Each field is made by :func:`option` and carries everything about one setting, once: its default, its help, its
range rule (an :class:`~kdq.function.checks.Interval`, which the flag's argparse type and the config's own check
both apply), its flag spelling and group, and whether it *defines results* (``--resume`` refuses a run made with
another value; a runtime setting such as ``--device`` may differ).  A stage's parser is built from its config
(:func:`build_parser`), its ``main`` turns the parsed flags into the config once (:meth:`StageConfig.from_args`),
and the library takes the config, never an ``argparse.Namespace``.

Nothing here imports torch: ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Sequence

from kdq.function.checks import Interval, check_in
from kdq.function.cli import Parser, within


@dataclass(frozen=True)
class Flag:
    """How one config field is given on the command line, and what it means for a run."""

    help: str
    group: str  # the --help section
    names: tuple[str, ...] = ()  # option strings (default: --<field name with dashes>)
    check: Interval | None = None  # the value's range rule (CLI type and config check)
    type: Callable[[str], Any] | None = None  # argparse type of an unchecked value (Path, int, str)
    choices: tuple | None = None
    nargs: str | int | None = None
    const: Any = None
    metavar: str | None = None
    action: str | None = None  # "store_true" or "store_false"
    required: bool = False
    results: bool = True  # defines results: --resume refuses another value
    growable: bool = False  # a result setting --resume may raise (--epochs of train_net: extending a training)


OPTIONS = "options"  # argparse's own section (-h, --debug)


def option(default: Any, help: str, group: str, **flag: Any) -> Any:
    """A config field: its default and its :class:`Flag` (``help``, ``group`` and the other Flag fields)."""
    meta = {"flag": Flag(help, group, **flag)}
    if isinstance(default, list):
        frozen = tuple(default)
        return field(default_factory=lambda: list(frozen), metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> Flag | None:
    return f.metadata.get("flag")


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh copy of a list default)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


class StageConfig:
    """The methods every stage config shares (mixed into each ``@dataclass``).  A config made in Python is
    checked as the flags are (:meth:`check`)."""

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def from_args(cls, args: argparse.Namespace, **changes: Any):
        """The config of parsed flags (what ``main`` does first); ``changes`` replace fields (values that the
        stage resolves from other flags)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**values, **changes})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default (the paper's setting: kdq's defaults are the paper's)."""
        return {f.name: default_of(f) for f in fields(cls)}

    @classmethod
    def runtime_settings(cls) -> frozenset[str]:
        """The fields that do not define results (how a run executes, where it writes)."""
        return frozenset(f.name for f in fields(cls) if flag_of(f) is not None and not flag_of(f).results)

    @classmethod
    def growable_settings(cls) -> frozenset[str]:
        """The result fields that ``--resume`` may raise (extending a finished training)."""
        return frozenset(f.name for f in fields(cls) if flag_of(f) is not None and flag_of(f).growable)

    @classmethod
    def result_settings(cls) -> tuple[str, ...]:
        """The fields that define results, in declaration order."""
        return tuple(f.name for f in fields(cls) if flag_of(f) is None or flag_of(f).results)

    def check(self) -> None:
        """Every field's range rule (a CheckError naming the field); argparse has applied them to flags."""
        for f in fields(self):
            flag = flag_of(f)
            value = getattr(self, f.name)
            if flag is None or flag.check is None or value is None:
                continue
            for item in (value if isinstance(value, (list, tuple)) else [value]):
                check_in(f.name, item, flag.check)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


def _argparse_kwargs(f: dataclasses.Field, flag: Flag) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dest": f.name, "help": flag.help}
    if flag.action:
        kwargs["action"] = flag.action
        return kwargs
    kwargs["default"] = default_of(f)
    kind = within(flag.check) if flag.check is not None else flag.type
    for key, value in (("type", kind), ("choices", flag.choices), ("nargs", flag.nargs), ("const", flag.const),
                       ("metavar", flag.metavar)):
        if value is not None:
            kwargs[key] = list(value) if key == "choices" else value
    if flag.required:
        kwargs["required"] = True
    return kwargs


def add_options(parser: argparse.ArgumentParser, config: type, groups: Sequence[str] = ()) -> None:
    """The flags of ``config``'s fields, in their --help sections: ``groups`` first in that order, the others
    as their fields come."""
    made: dict[str, Any] = {}

    def group(title: str):
        if title not in made:
            made[title] = parser.add_argument_group(title)
        return made[title]

    for title in groups:
        group(title)
    for f in fields(config):
        flag = flag_of(f)
        if flag is not None:
            names = flag.names or (f"--{f.name.replace('_', '-')}",)
            where = parser if flag.group == OPTIONS else group(flag.group)
            where.add_argument(*names, **_argparse_kwargs(f, flag))


class ConfigParser(Parser):
    """A :class:`~kdq.function.cli.Parser` with a flag per field of a config, whose ``parse_args`` returns that
    config (the one place a stage's flags become its typed settings)."""

    def __init__(self, config: type, *args: Any, groups: Sequence[str] = (), **kwargs: Any):
        super().__init__(*args, debug_flag="debug" not in {f.name for f in fields(config)}, **kwargs)
        self.config = config
        add_options(self, config, groups)

    def parse_args(self, args=None, namespace=None):  # noqa: D401 - argparse API
        return self.config.from_args(super().parse_args(args, namespace))


def build_parser(config: type, description: str, epilog: str | None = None) -> ConfigParser:
    """The stage's parser for ``config`` (its ``GROUPS`` give the order of the --help sections)."""
    return ConfigParser(config, description=description, epilog=epilog, groups=getattr(config, "GROUPS", ()))
