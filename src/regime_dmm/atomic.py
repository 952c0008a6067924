"""All-or-nothing writes: one helper for files and one for folders, and one lock per folder a run grows.

Every file the package writes (CSV, JSON, checkpoints, netCDF, plots) goes through
:func:`atomic_write`, and every output folder through :func:`staging_folder`, so an
interrupted or failed run never leaves a half-written file or folder behind. A run that fills a
folder step by step and resumes in it (a sweep, a walk-forward) holds :func:`folder_lock`, so that a
second run into the same folder stops at once instead of interleaving its files with the first's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import RegimeDMMError

__all__ = [
    "LOCK_FILE",
    "atomic_write",
    "atomic_write_text",
    "folder_lock",
    "replace_folder",
    "staged_files",
    "staging_folder",
]

#: The lock file inside a folder a run holds (:func:`folder_lock`).
LOCK_FILE = ".regime-dmm.lock"


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


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold ``folder`` for one run (``what``: for the message, e.g. "sweep") while the block runs; yields the folder.

    The lock is an operating-system file lock on ``folder/.regime-dmm.lock`` (the ``filelock`` package, which
    torch already requires): the system releases it when the process ends, even when it is killed, so no stale
    lock outlives a crash. A folder this call created is removed again when the run left nothing else in it.
    Raises :class:`~regime_dmm.errors.RegimeDMMError` at once, changing nothing, when another run holds it.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RegimeDMMError(
            f"another regime-dmm run is writing into {folder} (a {what}, or another command using it): wait for it "
            "to finish, or use another --out"
        ) from None
    try:
        yield folder
    finally:
        lock.release()
        if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            folder.rmdir()
