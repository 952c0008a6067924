"""The state of a run of restarts, and the schema of the run checkpoint (``checkpoint.pt``).

Dataclasses, not nested dicts: :class:`RunState` holds the finished restarts
(:class:`RestartRecord`), the best one so far (:class:`BestRestart`) and the one in progress
(:class:`InProgress`); :class:`RunCheckpoint` adds the configuration and the data's identity
and converts to and from the plain payload written with ``torch.save`` (tensors and builtins
only, read back with ``weights_only=True``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..checkpoints import read_checkpoint, write_checkpoint
from ..errors import CheckpointError
from .svi import LoopState

__all__ = ["BestRestart", "DataIdentity", "InProgress", "RESUME_FORMAT", "RestartRecord", "RunCheckpoint", "RunState"]

RESUME_FORMAT = "regime-dmm-resume/3"  # 3: the loop state holds the L-BFGS refinement's state


@dataclass
class RestartRecord:
    """A finished (or failed) restart: its summary row, training history, faults and, after a warm
    start, the usage ``(M, K)`` of the warm start's maximum-likelihood HMM (the collapse reference)."""

    restart: int
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    reference_usage: list[list[float]] | None = None


@dataclass
class BestRestart:
    """The restart kept so far: its index, score (lower is better) and parameters (the param store's)."""

    restart: int
    score: float
    params: dict[str, torch.Tensor]


@dataclass
class InProgress:
    """A restart stopped mid-way: the loop state, its parameters, torch's random state and the
    reference usage of its warm start (so that a resume need not redo the warm start)."""

    restart: int
    loop: LoopState
    params: dict[str, torch.Tensor]
    torch_rng: torch.Tensor
    reference_usage: list[list[float]] | None = None


@dataclass
class RunState:
    """Everything a run of restarts has done so far."""

    completed: list[RestartRecord] = field(default_factory=list)
    best: BestRestart | None = None
    current: InProgress | None = None

    def finished(self) -> set[int]:
        """Indices of the restarts that are done (ok or failed)."""
        return {record.restart for record in self.completed}

    def record(self, restart: int) -> RestartRecord:
        """The record of ``restart`` (``KeyError`` when it has none)."""
        for entry in self.completed:
            if entry.restart == restart:
                return entry
        raise KeyError(restart)

    def to_payload(self) -> dict[str, Any]:
        """Plain data (tensors and builtins)."""
        return {
            "completed": [asdict(r) for r in self.completed],
            "best": None if self.best is None else asdict(self.best),
            "current": None
            if self.current is None
            else {
                "restart": self.current.restart,
                "loop": self.current.loop.to_dict(),
                "params": self.current.params,
                "torch_rng": self.current.torch_rng,
                "reference_usage": self.current.reference_usage,
            },
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> RunState:
        """Inverse of :meth:`to_payload`; ``KeyError``/``TypeError`` on a malformed payload."""
        current = data.get("current")
        best = data.get("best")
        return cls(
            completed=[RestartRecord(**r) for r in data["completed"]],
            best=None if best is None else BestRestart(**best),
            current=None
            if current is None
            else InProgress(
                current["restart"],
                LoopState(**current["loop"]),
                current["params"],
                current["torch_rng"],
                current.get("reference_usage"),
            ),
        )


@dataclass
class DataIdentity:
    """Which data a run was fitted on: the CSV path (None for a DataFrame or the simulation),
    whether it is the embedded simulation, and the fingerprint of its panel."""

    path: str | list[str] | None
    simulated: bool
    fingerprint: str


@dataclass
class RunCheckpoint:
    """The run checkpoint: configuration (plain data), data identity and run state."""

    config: dict[str, Any]
    data: DataIdentity
    run: RunState

    def save(self, path: str | Path) -> None:
        """Write atomically (``torch.save`` of plain data)."""
        write_checkpoint(
            {
                "format": RESUME_FORMAT,
                "package_version": __version__,
                "config": self.config,
                "data": asdict(self.data),
                "run": self.run.to_payload(),
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> RunCheckpoint:
        """Read with ``weights_only=True``; :class:`CheckpointError` for anything but a valid run checkpoint."""
        payload = read_checkpoint(path, RESUME_FORMAT, "run checkpoint", required=("config", "data", "run"))
        try:
            return cls(payload["config"], DataIdentity(**payload["data"]), RunState.from_payload(payload["run"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed run checkpoint ({type(exc).__name__}: {exc})") from None
