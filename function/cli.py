"""Command-line plumbing shared by every stage script.

* :class:`Parser` — an ``argparse.ArgumentParser`` whose errors are one line on stderr, status 2.
* :class:`UserError` — raised for bad input anywhere; :func:`run` turns it into that one line.
* :func:`run` — ``__main__`` of every script: parse, set up logging, call ``main``.
"""
from __future__ import annotations

import argparse
import errno
import logging
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger("kdq")


# I/O errors that the user's environment causes (a missing or unreadable path, a full or read-only disk):
# one line like bad input; any other OSError is a bug and keeps its traceback
USER_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENOSPC,
                         errno.EROFS, errno.EDQUOT, errno.EIO, errno.EEXIST, errno.ENOTEMPTY, errno.ENAMETOOLONG})


class UserError(Exception):
    """Bad input: reported as one line on stderr with exit status 2 (traceback only with --debug)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Show ``(default: X)`` for flags that have a meaningful default (not None/False, not required)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or action.required or default in (None, False, argparse.SUPPRESS)
                or isinstance(action, argparse._HelpAction)):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """ArgumentParser with one-line errors and ``--debug``; defaults shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="show the full traceback instead of a one-line error")

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def run(get_parser: Callable[[], argparse.ArgumentParser], main: Callable[[argparse.Namespace], object],
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``main`` and map :class:`UserError` and I/O errors (``OSError``: a missing or
    unreadable path, a read-only or full disk) to one line on stderr and exit 2."""
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        main(args)
    except (UserError, OSError) as exc:
        if getattr(args, "debug", False) or (isinstance(exc, OSError) and exc.errno not in USER_ERRNOS):
            raise
        msg = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc} (--debug shows where)"
        sys.stderr.write(f"{parser.prog}: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{parser.prog}: interrupted; rerun with --resume to continue\n")
        return 130
    return 0


def setup_logging(rank: int = 0) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        force=True)


def existing_dir(flag: str, path: Path) -> Path:
    """``path`` if it is a directory, else a UserError naming ``flag``."""
    if not path.exists():
        raise UserError(f"{flag}: {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{flag}: {path} is not a directory")
    return path


def existing_file(flag: str, path: Path) -> Path:
    if not path.exists():
        raise UserError(f"{flag}: {path} does not exist")
    if not path.is_file():
        raise UserError(f"{flag}: {path} is not a file")
    return path


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def finite_float(text: str) -> float:
    """A float that is neither NaN nor infinite (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
