"""Command-line plumbing shared by every script: one parser class, one way to fail, one ``__main__``.

* :class:`Parser` — an ``argparse.ArgumentParser`` whose errors are one line on stderr (exit 2), which
  shows each flag's default in ``--help`` and keeps descriptions and epilogs as written.
* :class:`UserError` — raised for bad input anywhere; :func:`run` turns it into that one line.
* :func:`run` — the ``__main__`` of every script: parse, set up logging, call ``main``.
* argparse types (:func:`positive_int`, :func:`finite_float`, :func:`within` ...), so that a bad value is reported
  under its flag's name; each calls the rule of :mod:`kdq.function.checks` that the Python API applies too;.

Nothing here imports torch: ``--help`` of a script stays fast when the script imports torch after parsing.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from kdq.function.checks import (BOOTSTRAP_COUNT, FINITE, NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED,
                                 CheckError, Interval, RangeError, check_in)

# I/O errors that the user's environment causes (a missing or unreadable path, a full or read-only disk):
# one line like bad input; any other OSError is a bug and keeps its traceback
USER_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENOSPC,
                         errno.EROFS, errno.EDQUOT, errno.EIO, errno.EEXIST, errno.ENOTEMPTY, errno.ENAMETOOLONG,
                         errno.ELOOP})


class UserError(Exception):
    """Bad input: reported as one line on stderr with exit status 2 (traceback only with --debug)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; ``(default: X)`` after flags with a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or action.required or default in (None, False, argparse.SUPPRESS)
                or isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction))
                or text == argparse.SUPPRESS):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """ArgumentParser with one-line errors and ``--debug``; defaults shown in ``--help``."""

    def __init__(self, *args, debug_flag: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        if debug_flag:
            self.add_argument("--debug", action="store_true",
                              help="show the full traceback instead of a one-line error")

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def run(get_parser: Callable[[], argparse.ArgumentParser], main: Callable[[argparse.Namespace], object],
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``main`` and map :class:`UserError`, a broken argument rule
    (:class:`~kdq.function.checks.CheckError`) and I/O errors (``OSError``: a missing or unreadable path, a
    read-only or full disk) to one line on stderr and exit 2."""
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logging(env_rank())
    previous = _terminate_as_interrupt(parser.prog)
    try:
        main(args)
    except (UserError, CheckError, OSError) as exc:
        if getattr(args, "debug", False) or (isinstance(exc, OSError) and exc.errno not in USER_ERRNOS):
            raise
        msg = str(exc) if not isinstance(exc, OSError) else f"{type(exc).__name__}: {exc} (--debug shows where)"
        sys.stderr.write(f"{parser.prog}: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        resumable = any("--resume" in action.option_strings for action in parser._actions)
        advice = "; rerun with --resume to continue" if resumable else "; run it again"
        sys.stderr.write(f"{parser.prog}: interrupted{advice}\n")
        return 130
    finally:
        from kdq.function.io.lock import release_all

        release_all()
        for signum, handler in (previous or {}).items():
            signal.signal(signum, handler)
    return 0


class Interruption:
    """The handler of Ctrl-C (SIGINT) and SIGTERM while a script runs.  The first signal raises KeyboardInterrupt,
    so the stage cleans up (run.json records ``interrupted``) and :func:`run` says how to continue; one that comes
    while it cleans up is answered with one line and otherwise ignored, so that the clean-up finishes and no
    traceback appears; a third quits at once (exit 130) for a clean-up that hangs."""

    def __init__(self, prog: str):
        self.prog, self.count = prog, 0

    def __call__(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            raise KeyboardInterrupt
        if self.count == 2:
            sys.stderr.write(f"{self.prog}: interrupted again: finishing the clean-up first (interrupt once more "
                             "to quit at once)\n")
            return
        sys.stderr.write(f"{self.prog}: quitting without finishing the clean-up\n")
        sys.stderr.flush()
        os._exit(130)


def _terminate_as_interrupt(prog: str = "kdq") -> dict | None:
    """Ctrl-C and SIGTERM (``kill``, a batch system's time limit) end a stage the same way, through one
    :class:`Interruption`: run.json records ``interrupted`` and the message says how to continue.  Returns the
    previous handlers by signal (None off the main thread, where Python cannot set them)."""
    handler = Interruption(prog)
    wanted = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
    try:  # (a Ctrl-C the shell had us ignore, as for a background job, stays ignored)
        return {signum: signal.signal(signum, handler) for signum in wanted}
    except ValueError:  # not the main thread
        return None


def env_rank() -> int:
    """The process's rank under torchrun (``RANK``), 0 when not launched by it."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time of each record (a test's capture, a
    redirected stream), never to a stream closed since the handler was made."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always reads sys.stderr
        pass


def setup_logging(rank: int = 0) -> None:
    """Log records of level INFO and above on rank 0, WARNING and above on the other ranks, to stderr."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, handlers=[handler], force=True)


# ---- argparse types: a bad value is reported under its flag ---------------------------------------------
def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def within(interval: Interval):
    """An argparse type for a number in ``interval``: the rule of :func:`kdq.function.checks.check_in`, which the
    Python API applies too, its message under the flag's name (``argument --sigma0: must be in (0, 1], got 5``)."""
    kind = int if interval.integer else float

    def parse(text: str):
        value = _number(text, kind)
        try:
            check_in("", value, interval)
        except RangeError as exc:
            raise argparse.ArgumentTypeError(f"{exc.requirement}, got {text}") from None
        return value

    parse.__name__ = interval.wording or interval.requirement.removeprefix("must be ")
    return parse


positive_int = within(POSITIVE_INT)
nonnegative_int = within(NONNEGATIVE_INT)
finite_float = within(FINITE)  # a float that is neither NaN nor infinite
positive_float = within(POSITIVE)
nonnegative_float = within(NONNEGATIVE)
seed = within(SEED)  # a random seed: what torch, numpy and Python's random all accept

# counts whose tables a run holds in memory, bounded so that they fit: a training phase of E epochs keeps per-epoch
# tables (the learning rates, weight_diff.npy's 4 x (E+1) distances, the log), the bootstrap n_boot x statistics
MAX_EPOCHS = 1_000_000
EPOCHS = Interval(1, MAX_EPOCHS, integer=True, wording=f"an integer in 1..{MAX_EPOCHS} (a run keeps a table row per "
                                                        "epoch)")
EPOCHS_OR_ZERO = Interval(0, MAX_EPOCHS, integer=True,
                          wording=f"an integer in 0..{MAX_EPOCHS} (a run keeps a table row per epoch)")
epoch_count = within(EPOCHS)
epoch_count_or_zero = within(EPOCHS_OR_ZERO)
bootstrap_count = within(BOOTSTRAP_COUNT)  # kdq.compare's n_boot follows the same rule


def in_range(lo: float, hi: float, lo_included: bool = True, hi_included: bool = True, kind: type = float):
    """An argparse type for a number between ``lo`` and ``hi`` (each bound included or not)."""
    return within(Interval(lo, hi, lo_open=not lo_included, hi_open=not hi_included, integer=kind is int))


DEVICE_HELP = "auto (CUDA, else Apple's MPS, else the CPU), cpu, cuda, cuda:N or mps (under torchrun, cuda is " \
              "each rank's local GPU)"


def add_device_arg(group) -> None:
    """``--device``: the one spelling of the flag every stage and bench shares (resolved by
    :func:`kdq.function.runtime.resolve_device`)."""
    group.add_argument("--device", default="auto", help=DEVICE_HELP)


def existing_dir(flag: str, path: Path) -> Path:
    """``path`` if it is a directory, else a UserError naming ``flag``."""
    if not path.exists():
        raise UserError(f"{flag}: {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{flag}: {path} is not a directory")
    return path
