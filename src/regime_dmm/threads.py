"""How many CPU threads a fit uses, decided on purpose rather than left to torch's default.

torch runs each operation on ``torch.get_num_threads()`` intra-op (OpenMP) threads, one per core by
default. Fits side by side, each with one thread per core, oversubscribe the machine: on the 2-core
machine two default fits with 2 threads each took 5.8x as long as one alone (OpenMP threads
spin-wait on each other; ``OMP_WAIT_POLICY=PASSIVE`` made a fit alone slower than one thread).
The policy here (figures in the README, ``python benchmarks/bench_sweep.py --single-only``):

* **a single fit** (``regime-dmm fit``, :func:`regime_dmm.fit`) with no thread count given uses
  :data:`SINGLE_FIT_THREADS` (2: faster alone than 1 on the default data), shared out among the
  regime-dmm fits running on the machine: every fit registers itself in a folder of lock files
  (:class:`FitRegistry`) for as long as it runs, and a fit of the default policy uses
  ``max(1, min(2, cores // fits running))`` threads, recounted at most once a second between training
  steps (:func:`refresh_threads`). Two fits side by side thus drop to one thread each, and the one
  left goes back to two;
* ``threads=N`` / ``--threads N`` / the environment variable ``REGIME_DMM_THREADS`` fix the count
  (for batch systems that hand a job a number of cores); the fit still registers, so that others
  count it;
* **a task of a sweep** (:mod:`regime_dmm.sweep`): 1 thread, and the worker processes start with
  ``OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=1``, so that ``N`` workers use ``N`` cores.

:func:`using_threads` applies the policy for the duration of a block and puts the previous count back.
"""

from __future__ import annotations

import numbers
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

try:  # POSIX: advisory locks mark the fits that are alive (elsewhere the default count is fixed)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from .errors import ConfigError

__all__ = [
    "FitRegistry",
    "SINGLE_FIT_THREADS",
    "THREADS_VARIABLE",
    "WORKER_ENVIRONMENT",
    "available_cores",
    "refresh_threads",
    "resolve_threads",
    "using_threads",
]

#: Seconds between two recounts of the fits running (:func:`refresh_threads`).
RECOUNT_SECONDS = 1.0

#: Threads of a single fit (measured faster than 1 on the default data: see the module docstring).
SINGLE_FIT_THREADS = 2

#: Environment variable that sets the default thread count of a fit.
THREADS_VARIABLE = "REGIME_DMM_THREADS"

#: Environment of a sweep's worker processes: one OpenMP / MKL / OpenBLAS thread each.
WORKER_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None) -> int:
    """The thread count to use: ``threads`` itself, or (None) ``$REGIME_DMM_THREADS`` when set, else
    ``min(SINGLE_FIT_THREADS, available_cores())``.

    Raises :class:`~regime_dmm.errors.ConfigError` when ``threads`` or the variable is not an integer >= 1.
    """
    if threads is None:
        text = os.environ.get(THREADS_VARIABLE, "").strip()
        if not text:
            return min(SINGLE_FIT_THREADS, available_cores())
        try:
            threads = int(text)
        except ValueError:
            raise ConfigError(f"{THREADS_VARIABLE} must be an integer >= 1, got {text!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    return int(threads)


class FitRegistry:
    """The regime-dmm fits running on this machine (for this user): one locked file per fit in ``folder``.

    A fit :meth:`enter` s by creating ``<pid>-<n>-<ns>.lock`` and holding an exclusive ``flock`` on it until
    :meth:`leave`; :meth:`count` counts the files whose lock is held, so a fit that died (its lock
    released by the OS) is not counted and its file is removed. Default folder:
    ``<tempdir>/regime-dmm-<uid>/fits``. Without ``fcntl`` (Windows) or a writable folder every count
    is 1 (this fit alone). Sources: the flock(2) semantics, as pid files use them.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        uid = os.getuid() if hasattr(os, "getuid") else 0
        self.folder = Path(folder) if folder is not None else Path(tempfile.gettempdir()) / f"regime-dmm-{uid}" / "fits"
        self._held: list[tuple[int, Path]] = []
        self._serial = 0

    def enter(self) -> Path | None:
        """Register this fit: its lock file (the token for :meth:`leave`), or None when registering is
        impossible here (the fit then counts alone)."""
        if fcntl is None:
            return None
        self._serial += 1
        name = f"{os.getpid()}-{self._serial}-{time.monotonic_ns()}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / f".{name}.new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError:
            return None
        try:  # locked before it gets the name count() looks for, so no counter takes it for a dead fit's
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(self.folder / f".{name}.new", self.folder / f"{name}.lock")
        except OSError:
            os.close(fd)
            (self.folder / f".{name}.new").unlink(missing_ok=True)
            return None
        self._held.append((fd, self.folder / f"{name}.lock"))
        return self.folder / f"{name}.lock"

    def leave(self, token: Path | None = None) -> None:
        """Unregister the fit whose lock file is ``token`` (:meth:`enter`'s return), else the last one entered;
        a no-op when there is none."""
        if not self._held:
            return
        index = next((i for i, (_, p) in enumerate(self._held) if p == token), len(self._held) - 1)
        fd, path = self._held.pop(index)
        path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock

    def count(self) -> int:
        """Fits registered and alive, at least 1 (this one)."""
        if fcntl is None:
            return 1
        try:
            paths = list(self.folder.glob("*.lock"))
        except OSError:
            return 1
        alive = 0
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:  # gone meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a fit is running
                alive += 1
            else:  # nobody holds it: its fit died without leaving
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return max(alive, 1)


class _Session:
    """The default-policy fit running in this process: its registry and the last recount."""

    def __init__(self, registry: FitRegistry, wanted: int) -> None:
        self.registry, self.wanted = registry, wanted
        self.checked = -float("inf")

    def threads(self) -> int:
        return max(1, min(self.wanted, available_cores() // self.registry.count()))


_REGISTRY = FitRegistry()
_SESSION: list[_Session] = []


def refresh_threads() -> None:
    """Between training steps: recount the fits running (at most once per :data:`RECOUNT_SECONDS`) and set
    this fit's torch threads to its share; a no-op outside a default-policy fit. Call from the thread
    that runs the fit (OpenMP's thread count belongs to the calling thread)."""
    if not _SESSION:
        return
    session = _SESSION[-1]
    now = time.monotonic()
    if now - session.checked < RECOUNT_SECONDS:
        return
    session.checked = now
    count = session.threads()
    if count != torch.get_num_threads():
        torch.set_num_threads(count)


@contextmanager
def using_threads(threads: int | None, registry: FitRegistry | None = None) -> Iterator[int]:
    """Run a fit's block under the thread policy of the module docstring; the previous count is restored.

    ``threads``: a fixed count, or None for the default policy (``$REGIME_DMM_THREADS`` when set, else
    :data:`SINGLE_FIT_THREADS` shared out among the fits running, see :func:`refresh_threads`).
    ``registry``: where fits register (default: the machine-wide one). Yields the count at the start.
    Raises :class:`~regime_dmm.errors.ConfigError` for a bad ``threads`` or ``$REGIME_DMM_THREADS``.
    """
    registry = registry or _REGISTRY
    adaptive = threads is None and not os.environ.get(THREADS_VARIABLE, "").strip()
    count = resolve_threads(threads)
    previous = torch.get_num_threads()
    registered = registry.enter()
    session = _Session(registry, count) if adaptive else None
    try:
        if session is not None:
            count = session.threads()
            session.checked = time.monotonic()
            _SESSION.append(session)
        if count != torch.get_num_threads():
            torch.set_num_threads(count)
        yield count
    finally:
        if session is not None:
            _SESSION.remove(session)
        if registered is not None:
            registry.leave(registered)
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
