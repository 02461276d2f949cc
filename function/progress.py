"""Progress bars that stay readable in a log file: tqdm on a terminal, plain lines otherwise.

Under nohup, SLURM or a pipe, tqdm's carriage returns and ANSI codes pile up into one unreadable line; there a
:class:`PlainProgress` prints ``desc: 12/48 (25%), 0:00:18 elapsed, effective=7`` at most every ``interval``
seconds, and once more when it closes.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator


class PlainProgress:
    """The part of tqdm's interface the stages use, as occasional plain lines on stderr."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 initial: int = 0, interval: float = 30.0, leave: bool = True):
        self.iterable, self.desc, self.n, self.interval, self.leave = iterable, desc, initial, interval, leave
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.start = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._print()

    def set_postfix(self, ordered_dict=None, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "") -> None:
        self.postfix = s

    def close(self) -> None:
        if not self.closed and self.leave:
            self._print()
        self.closed = True

    def _print(self) -> None:
        self.last = time.monotonic()
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        elapsed = time.strftime("%H:%M:%S", time.gmtime(self.last - self.start))
        tail = f", {self.postfix}" if self.postfix else ""
        sys.stderr.write(f"{self.desc}: {done}, {elapsed} elapsed{tail}\n")
        sys.stderr.flush()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", enabled: bool = True,
             leave: bool = True, initial: int = 0):
    """A progress bar over ``iterable`` (or a manual one with ``total``): tqdm when stderr is a terminal, plain
    lines when it is not, nothing when ``enabled`` is false (``--no-progress``, ranks other than 0).  Inner bars
    (``leave=False``) print nothing in plain mode."""
    if not enabled or (not leave and not sys.stderr.isatty()):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=True, initial=initial)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=leave, initial=initial, dynamic_ncols=True)
    return PlainProgress(iterable, total=total, desc=desc, initial=initial, leave=leave)
