"""All-or-nothing writes: one helper for files and one for folders.

Every file the package writes (CSV, JSON, checkpoints, netCDF, plots) goes through
:func:`atomic_write`, and every output folder through :func:`staging_folder`, so an
interrupted or failed run never leaves a half-written file or folder behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "replace_folder", "staged_files", "staging_folder"]


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` all at once: ``write(tmp)`` fills a temporary file beside it, which then replaces it.

    ``write`` receives the temporary path (same folder, so the final :func:`os.replace` is
    atomic on one file system). Parent folders are created. If ``write`` raises, the
    temporary file is removed, ``path`` is left as it was, and the exception propagates.
    Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an existing ``out`` (kept until the move is done)."""
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, backup)
        os.replace(tmp, out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextmanager
def staging_folder(out: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; it becomes ``out`` when the block ends normally.

    On any exception (including ``KeyboardInterrupt``) the temporary folder is deleted and
    ``out`` is left untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged_files(folder: str | Path) -> Iterator[Path]:
    """A temporary folder inside ``folder`` to write files into; when the block ends normally, each file
    replaces its namesake in ``folder`` (one at a time, each whole; other files of ``folder`` are kept).

    On any exception nothing in ``folder`` changes and the temporary folder is deleted.
    """
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".staged-", dir=folder))
    try:
        yield tmp
        for path in sorted(tmp.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
