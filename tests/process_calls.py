"""Calls for tests/test_processes.py: module-level and importing nothing heavy, so that a spawned process that
imports them by name starts in moments."""


def square(x: int) -> int:
    """``x * x``."""
    return x * x


def fail_with(message: str) -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


def exit_without_result(code: int, after: str | None = None) -> None:
    """End the process with ``code``, as a kill or the out-of-memory killer would (no result sent); with ``after``,
    once that file exists (at most a minute later)."""
    import os
    import time

    end = time.monotonic() + 60
    while after is not None and not os.path.exists(after) and time.monotonic() < end:
        time.sleep(0.05)
    os._exit(code)


def sleep_after_writing_pid(path: str, seconds: float) -> int:
    """Write this process's id to ``path``, then sleep ``seconds``; returns the id."""
    import os
    import time

    with open(path + ".tmp", "w", encoding="ascii") as fh:
        fh.write(str(os.getpid()))
    os.replace(path + ".tmp", path)  # whole or absent
    time.sleep(seconds)
    return os.getpid()


class NeedsTwo(Exception):
    """An exception whose constructor needs two arguments: pickle cannot rebuild it from its message alone."""

    def __init__(self, message: str, table: object):
        super().__init__(message)
        self.table = table


def fail_with_needs_two(message: str) -> None:
    """Raise :class:`NeedsTwo`."""
    raise NeedsTwo(message, table=[1, 2])


def run_sleeper_then_wait(pid_file: str) -> None:
    """In a process of its own (a parent to be killed): run a sleeper call through ``run_in_processes``."""
    from regime_dmm.processes import run_in_processes

    run_in_processes([("sleeper", sleep_after_writing_pid, (pid_file, 300.0))], workers=1)
