"""One writer per output folder: an exclusive ``fcntl.flock`` on a hidden sibling file, ``<parent>/.<name>.lock``,
held until the stage ends (or its process dies: the kernel then releases it, so a killed run never blocks the next).

The lock belongs to the real folder, not to the path as typed: the path is resolved first (symbolic links,
``a/../a``), so every spelling of a folder shares one lock.  A name so long that ``.<name>.lock`` would pass the
file-name limit gets a shortened, hashed stem (:func:`kdq.function.io.atomic.hidden_stem`).

The lock file sits beside the folder, not inside it, so that a folder replaced whole (the metrics report, the
embedded dataset) or emptied by ``--overwrite`` keeps its lock; it holds the pid of the writer, which the refusal
names.  The writer deletes it when it ends; a writer that locked a file someone deleted meanwhile (it checks that
the path still names the file it locked) tries again, so deleting never lets two writers in.  A killed writer
leaves the file behind, unlocked: harmless, the next writer takes it over.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Callable

from kdq.function.cli import UserError
from kdq.function.io.atomic import hidden_stem

log = logging.getLogger(__name__)

_HELD: dict[str, int] = {}  # lock file → descriptor, for this process
_ON_RELEASE: dict[str, list[Callable[[], None]]] = {}  # lock file → what to do before it is released


def lock_path(out: Path) -> Path:
    """``<parent>/.<name>.lock`` beside the real folder ``out`` names (the same file for every spelling of it)."""
    out = Path(out).resolve()
    return out.parent / f"{hidden_stem(out.name)}.lock"


def holder(out: Path) -> str:
    """The pid recorded in ``out``'s lock file ('?' when unreadable)."""
    try:
        return lock_path(out).read_text().strip() or "?"
    except OSError:
        return "?"


def acquire(out: Path, flag: str = "--out") -> None:
    """Take ``out``'s lock for this process (again: a no-op); a UserError naming the other writer's pid when a
    live process holds it."""
    path = lock_path(out)
    if str(path) in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{flag}: {out} is in use by another kdq process (pid {holder(out)}); wait for it "
                                "to end or stop it") from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was deleted by its previous holder after we opened it: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[str(path)] = fd


def on_release(out: Path, action: Callable[[], None]) -> None:
    """Run ``action`` when this process releases ``out``'s lock (which it must hold), while it still holds it:
    e.g. put back a previous run that the new one has not replaced yet."""
    path = str(lock_path(out))
    if path not in _HELD:
        raise RuntimeError(f"on_release: {out} is not locked by this process")
    _ON_RELEASE.setdefault(path, []).append(action)


def release_all() -> None:
    """Release (and delete) every lock this process holds, each after the actions :func:`on_release` registered
    for it: the end of a stage (in-process callers such as the tests run many stages)."""
    while _HELD:
        path, fd = _HELD.popitem()
        for action in _ON_RELEASE.pop(path, []):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the lock must be released whatever an action does
                log.warning("%s: %s", path, exc)
        try:
            os.unlink(path)  # while still locked: a writer that opened it meanwhile sees a deleted file, retries
        except OSError:
            pass
        try:
            os.close(fd)
        except OSError:
            pass
