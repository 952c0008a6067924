"""Independent calls side by side in spawned processes, on one machine (``select``'s fits of each K).

Each call runs in a process of its own (:mod:`multiprocessing`, spawn: a fresh interpreter, safe beside
torch's threads and the same on every OS), at most ``workers`` at a time, in the order given; its result
(or the exception it raised) comes back through a pipe. What a pool of long-lived workers does not give,
and this does:

* a process that dies without a result (killed, out of memory) is an error naming the call and the exit
  code, at once - not a wait for a result that never comes;
* on any error, interrupt or stop, every running process is killed and joined before the error propagates:
  no call goes on behind the caller's back;
* the processes ignore SIGINT from their start (the disposition survives the spawn's exec), so a
  terminal's Ctrl-C, which reaches the whole process group, interrupts the parent only, which then ends
  them: no traceback from every process.

Spawned processes import the caller's ``__main__`` module again: a script that calls this at import
time needs the ``if __name__ == "__main__":`` guard (Python's documentation, "multiprocessing: the spawn
start method"); the package's own command line has it. Dask (:mod:`regime_dmm.sweep`) is the tool for
fits past one machine.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import traceback
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from typing import Any

from .errors import QUIET_MODULES, RegimeDMMError

__all__ = ["ProcessDied", "run_in_processes", "sigint_ignored"]


class ProcessDied(RegimeDMMError):
    """A process ended without returning its call's result (killed by a signal, out of memory, ``os._exit``)."""


def run_in_processes(
    calls: Sequence[tuple[Hashable, Callable[..., Any], tuple[Any, ...]]],
    workers: int,
    on_result: Callable[[Hashable, Any], object] | None = None,
) -> dict[Hashable, Any]:
    """Run ``fn(*args)`` for each ``(key, fn, args)`` of ``calls`` in spawned processes, at most ``workers`` at
    once, started in the order of ``calls``; returns ``{key: result}``. ``fn`` and ``args`` must be picklable
    (``fn`` a module-level function). ``on_result(key, result)`` is called in this process as each result
    arrives.

    Raises the exception a call raised (as it arrived through the pipe; one that cannot be pickled becomes a
    :class:`RegimeDMMError` with its text), :class:`ProcessDied` naming the key and exit code when a process
    ends without a result, ``ValueError`` for ``workers`` < 1; in every case, and on KeyboardInterrupt or
    SystemExit, the running processes are killed first.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    context = multiprocessing.get_context("spawn")
    todo = list(calls)
    running: dict[Hashable, tuple[Any, Connection]] = {}
    results: dict[Hashable, Any] = {}
    try:
        while todo or running:
            started = []
            while todo and len(running) < workers:
                key, fn, args = todo.pop(0)
                conn, child_end = context.Pipe()
                # the process object is small, so start() returns at once (the call, which may be large, goes
                # through the pipe below): SIGINT is ignored here for moments only
                process = context.Process(target=_child, args=(child_end,), daemon=True)
                try:
                    with sigint_ignored():
                        process.start()
                except BaseException:
                    conn.close()
                    raise
                finally:
                    child_end.close()  # the child holds its end: EOF here once it exits
                running[key] = (process, conn)
                started.append((key, conn, fn, args))
            for key, conn, fn, args in started:  # each send waits for its process to read: they start together
                try:
                    conn.send((fn, args))
                except (BrokenPipeError, ConnectionResetError, EOFError):  # it died before it read its call
                    process, conn = running.pop(key)
                    conn.close()
                    process.join()
                    raise _died(key, process.exitcode) from None
            ready = wait([conn for _, conn in running.values()], timeout=1.0)
            for key in [k for k, (_, conn) in running.items() if conn in ready]:
                process, conn = running.pop(key)
                try:
                    status, value = conn.recv()
                except EOFError:  # the process is gone without sending
                    process.join()
                    raise _died(key, process.exitcode) from None
                finally:
                    conn.close()
                process.join()
                if status == "error":
                    error, trace = value
                    error.__cause__ = _RemoteTraceback(trace)  # the child's traceback, as concurrent.futures gives it
                    raise error
                results[key] = value
                if on_result is not None:
                    on_result(key, value)
    finally:
        for process, conn in running.values():
            process.kill()
            process.join()
            conn.close()
    return results


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a child process (its text), attached as the ``__cause__``."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _died(key: Hashable, code: int | None) -> ProcessDied:
    return ProcessDied(
        f"the process running {key} ended with exit code {code} before it returned a result (killed, or out of memory?)"
    )


def _child(conn: Connection) -> None:
    """The body of a process: receive ``(fn, args)``, run the call, send ``("ok", result)`` or ``("error",
    (exception, traceback text))``. An exception that would not come back whole through pickle (one whose
    constructor needs more than its message) is sent as a :class:`RegimeDMMError` naming its type. A parent that
    stopped while sending leaves nothing to run, and a parent that dies (killed, out of memory) ends this process
    too: the process ends quietly either way."""
    warnings.filterwarnings("ignore", module=QUIET_MODULES)
    parent = multiprocessing.parent_process()
    if parent is not None:  # no orphan fit running on after its parent is gone
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
    try:
        fn, args = conn.recv()
    except (EOFError, OSError, pickle.UnpicklingError):
        return
    try:
        message: tuple[str, Any] = ("ok", fn(*args))
    except Exception as exc:  # every failure goes back to the parent, which raises it
        message = ("error", (_sendable(exc), traceback.format_exc()))
    try:
        conn.send(message)
    except Exception as exc:  # a result that does not pickle
        conn.send(("error", (RegimeDMMError(f"a result that cannot be sent back: {exc}"), traceback.format_exc())))
    finally:
        conn.close()


def _sendable(exc: Exception) -> Exception:
    """``exc`` if it survives a pickle round trip, else a :class:`RegimeDMMError` with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RegimeDMMError(f"{type(exc).__name__}: {exc}")
    return exc


def _exit_with(sentinel: int) -> None:
    """Wait for the parent process's sentinel (ready when it ends), then end this process at once."""
    wait([sentinel])
    os._exit(1)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored within the block, for starting processes: they inherit it (an ignored signal stays ignored
    across fork and exec, and Python then installs no KeyboardInterrupt handler), so a Ctrl-C in the terminal,
    which reaches the whole process group, interrupts only this process, which stops them itself instead of each
    dying with a traceback of its own. The handler is restored afterwards; outside the main thread nothing is
    changed (signals are not ours to change there: the processes start with this one's disposition)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
