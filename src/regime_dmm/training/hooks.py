"""What training reports to its caller and asks of it, in one object passed down the layers.

A fit's training runs through four layers - :func:`~regime_dmm.fitting.fit`, the restart runner
(:func:`~.restarts.run_restarts`), a mode's :meth:`~.variants.Variant.train` and the SVI loop
(:func:`~.svi.train_svi`) - and each needs some of the same things from the caller: where log lines go,
whether to show a progress bar, when to stop (a :class:`StopControl` receiving SIGINT / SIGTERM, or a
polled ``stop_requested()``), how to checkpoint (``save()`` every ``checkpoint_every`` epochs) and what to
call after each epoch. :class:`TrainingHooks` carries them together, so a layer passes one object on instead
of five keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import RegimeDMMError

__all__ = ["FitInterrupted", "StopControl", "TrainingHooks"]


class FitInterrupted(RegimeDMMError):
    """Training was stopped on request (SIGINT/SIGTERM); a checkpoint was saved when one was asked for."""

    def __init__(self, message: str, checkpoint: Any = None):
        super().__init__(message)
        self.checkpoint = checkpoint


class StopControl:
    """Stop requests (SIGINT/SIGTERM) honoured within moments in every phase of a fit.

    Install :meth:`handler` as the signal handler. Inside :meth:`graceful` (the SVI epochs, which
    end in well under a second and checkpoint as they stop) a signal only sets :attr:`signal`, and
    the training loop stops at the end of the epoch with a checkpoint. Anywhere else (loading, the
    warm start, L-BFGS and EM, the posterior, writing outputs) the handler raises
    :class:`FitInterrupted` at once, naming :attr:`phase`; outputs are written all or nothing.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.phase = "starting"
        self._graceful = 0

    def requested(self) -> bool:
        """True once a stop was asked for."""
        return self.signal is not None

    @contextmanager
    def graceful(self) -> Iterator[None]:
        """A block that polls :meth:`requested` itself (and checkpoints before stopping)."""
        self._graceful += 1
        try:
            yield
        finally:
            self._graceful -= 1
        if self.signal is not None and not self._graceful:  # arrived after the block's last poll
            raise FitInterrupted(f"stopped while {self.phase}")

    def handler(self, signum: int, _frame: Any) -> None:
        """The signal handler (see the class docstring)."""
        self.signal = signum
        if not self._graceful:
            raise FitInterrupted(f"stopped while {self.phase}")


@dataclass(frozen=True)
class TrainingHooks:
    """The caller's side of training (all optional; the default reports nothing and never stops).

    ``log(line)``: receives the training log lines; ``progress``: a progress bar per restart; ``stop``: a
    :class:`StopControl` (its handler installed for SIGINT / SIGTERM by the caller) and ``stop_requested()``:
    polled after every epoch; ``save()``: persists the run state (a checkpoint), every ``checkpoint_every``
    epochs, after each restart and on a stop; ``on_epoch(loop)``: called after every completed epoch with the
    loop's state (the restart runner sets it per restart, for checkpoints and stops).
    """

    log: Callable[[str], None] | None = None
    progress: bool = False
    stop: StopControl | None = None
    stop_requested: Callable[[], bool] | None = None
    save: Callable[[], None] | None = None
    checkpoint_every: int = 50
    on_epoch: Callable[[Any], None] | None = None  # called with the SVI loop's LoopState

    def say(self, line: str) -> None:
        """Send ``line`` to the log (nowhere without one)."""
        if self.log is not None:
            self.log(line)

    def stopping(self) -> bool:
        """True once a stop was asked for, by the stop control or by ``stop_requested()``."""
        return (self.stop_requested is not None and self.stop_requested()) or (
            self.stop is not None and self.stop.requested()
        )

    def phase(self, text: str) -> None:
        """Name what the fit is doing now (the stop control's message when it interrupts)."""
        if self.stop is not None:
            self.stop.phase = text

    def epoch_done(self, loop: Any) -> None:
        """Call ``on_epoch(loop)`` when set (``loop``: the SVI loop's :class:`~.svi.LoopState`)."""
        if self.on_epoch is not None:
            self.on_epoch(loop)
