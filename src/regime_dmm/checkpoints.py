"""Reading and writing checkpoint files: tensors and plain data only, never code.

Both kinds of file (a finished model, ``model.pt``; a run to resume, ``checkpoint.pt``)
are read with ``torch.load(weights_only=True)``, so a pickle that would run code is refused,
and are written with :func:`~regime_dmm.atomic.atomic_write` (flushed to disk, then renamed
over the target).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .atomic import atomic_write
from .errors import CheckpointError

__all__ = ["read_checkpoint", "write_checkpoint"]


def write_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` ``payload`` (tensors and plain data) to ``path`` atomically, synced to disk."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def read_checkpoint(path: str | Path, fmt: str, what: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load ``path`` safely and check its format tag, package version and keys.

    Raises :class:`CheckpointError` for a missing, truncated, tampered, foreign or
    other-version file, never anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, tampered with, pickled code, not a torch file
        raise CheckpointError(f"{path}: not a readable regime-dmm checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise CheckpointError(f"{path}: not a regime-dmm {what} (format {found!r}, expected {fmt!r})")
    if payload.get("package_version") != __version__:
        raise CheckpointError(f"{path}: written by regime-dmm {payload.get('package_version')}, this is {__version__}")
    for key in required:
        if key not in payload:
            raise CheckpointError(f"{path}: {what} is missing {key!r}")
    return payload
