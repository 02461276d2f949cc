"""Atomic writes: every file is written under a temporary name in the same folder and then
``os.replace``d, so a reader (or a resumed run) never sees a half-written file under its final name."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np


NAME_MAX = 255  # bytes in one file name (Linux, macOS)
SUFFIX_ROOM = 24  # bytes a hidden sibling adds after its stem (the longest: ".XXXXXXXX.old.tmp", 17)


def hidden_stem(name: str) -> str:
    """``.<name>``: the start of every hidden sibling kdq makes beside a file or folder called ``name`` (its lock,
    its temporary and its moved-aside copies).  When a suffix would take it past the file-system limit of
    :data:`NAME_MAX` bytes, the name is cut to its first bytes and ``~`` plus 8 hex digits of its SHA-256 are added,
    so every legal name has legal siblings and two long names with the same start have different ones."""
    raw = os.fsencode(name)
    if 1 + len(raw) + SUFFIX_ROOM <= NAME_MAX:
        return f".{name}"
    digest = hashlib.sha256(raw).hexdigest()[:8]
    prefix = raw[:NAME_MAX - SUFFIX_ROOM - 10].decode("utf-8", "ignore")  # 10: "." + "~" + 8 digits
    return f".{prefix}~{digest}"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _make_temp(path, directory=False)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path`` (``.<name>.XXXXXXXX.tmp``, with the umask's permissions); on
    success it replaces ``path``, on failure it is deleted.

    An existing folder at ``path`` is moved aside (``.<name>.XXXXXXXX.old.tmp``) and deleted only once the new
    one is in place; if the swap fails it is put back, and if even that fails (or the writer is killed in
    between) the next ``atomic_dir`` of the same ``path`` puts it back before it starts.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # write where the link points, keep the link
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover_siblings(path)
    tmp = _make_temp(path, directory=True)
    old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old.tmp")
    try:
        yield tmp
        if path.exists():
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old.exists():
                os.rename(old, path)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and path.exists():  # never delete the previous result while nothing replaces it
            shutil.rmtree(old, ignore_errors=True)


def _make_temp(path: Path, directory: bool) -> Path:
    """A new file or folder ``.<name>.XXXXXXXX.tmp`` beside ``path`` (:func:`hidden_stem`), with the permissions the
    process's umask gives a new file (0666) or folder (0777) — results are shared like any other file, not private."""
    for _ in range(100):
        tmp = path.with_name(f"{hidden_stem(path.name)}.{secrets.token_hex(4)}.tmp")
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _recover_siblings(path: Path) -> None:
    """Put back a previous folder that a killed or failed swap left aside; delete the other temporaries
    of ``path`` (exactly :func:`_make_temp`'s names for it, not those of a folder whose name merely starts
    alike)."""
    pattern = re.compile(rf"^{re.escape(hidden_stem(path.name))}\.[A-Za-z0-9_]{{8}}(\.old)?\.tmp$")
    siblings = [p for p in path.parent.iterdir() if pattern.match(p.name)]
    for p in siblings:
        if p.name.endswith(".old.tmp") and not path.exists():
            os.rename(p, path)
        else:
            shutil.rmtree(p, ignore_errors=True)


def is_temp(path: Path) -> bool:
    """A temporary file or folder of this module (``.<name>.*.tmp``): never a result under its final name."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def remove_stale_temps(folder: Path) -> int:
    """Delete the temporary files and folders (``.*.tmp``) that a killed writer left directly in ``folder``
    (the stages write only there: a sigma image is a whole temporary folder); call it only when no other
    process writes there.  Returns how many were removed."""
    stale = [p for p in Path(folder).iterdir() if is_temp(p)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return len(stale)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as strict JSON, the one writer of every JSON file kdq writes: a NaN or infinite float is written
    as ``null`` (Python's ``NaN``/``Infinity`` are not JSON: ``jq`` and ``JSON.parse`` reject them); a writer whose
    numbers may be such says so in a note of its own."""
    write_text(path, json.dumps(finite_or_none(obj), indent=2, sort_keys=False, default=_json_default,
                                allow_nan=False) + "\n")


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN/inf float (NumPy's too, in arrays as well) replaced by None."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return finite_or_none(obj.tolist())
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    write_bytes(path, buf.getvalue())


def save_torch(path: Path, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())
