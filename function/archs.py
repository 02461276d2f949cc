"""The architecture a stage runs, from its ``--arch`` flag: a name of the model registry (:mod:`kdq.models`).

Every stage resolves its architecture here, so an unknown name is the same one-line error everywhere.
"""
from __future__ import annotations

from kdq.function.cli import UserError
from kdq.models import ArchInfo, arch_info


def arch_or_error(name: str, flag: str = "--arch") -> ArchInfo:
    """The registry entry of ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return arch_info(name)
    except KeyError as exc:
        raise UserError(f"{flag}: {exc}") from None
