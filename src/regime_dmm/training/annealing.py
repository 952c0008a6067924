"""Annealing schedules: callbacks that set beta, tau and penalty weights each epoch.

A schedule is any callable ``schedule(epoch, num_epochs, state)`` that mutates the
:class:`~regime_dmm.models.base.AnnealState`; epochs count from 1. The training loop
calls every schedule at the start of every epoch and logs the resulting values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Protocol

from ..config import FitConfig, PenaltyConfig
from ..models.base import AnnealState

__all__ = ["BetaWarmup", "PenaltySwitch", "Schedule", "TemperatureDecay", "default_schedules"]


class Schedule(Protocol):
    """Sets some values of ``state`` for ``epoch`` (1-based) of ``num_epochs``."""

    def __call__(self, epoch: int, num_epochs: int, state: AnnealState) -> None: ...


@dataclass
class BetaWarmup:
    """KL weight: 0 for the first ``warmup`` share of epochs, then a linear ramp to 1."""

    warmup: float = 0.2
    ramp: float = 0.2

    def value(self, epoch: int, num_epochs: int) -> float:
        """beta at ``epoch`` (1-based) of ``num_epochs``."""
        done = (epoch - 1) / num_epochs  # share of epochs completed before this one
        if done < self.warmup:
            return 0.0
        if self.ramp <= 0:
            return 1.0
        return min(1.0, (done - self.warmup) / self.ramp + 1.0 / (self.ramp * num_epochs))

    def __call__(self, epoch: int, num_epochs: int, state: AnnealState) -> None:
        state.beta = self.value(epoch, num_epochs)


@dataclass
class TemperatureDecay:
    """Relaxation temperature: geometric decay from ``start`` to ``floor`` over the run."""

    start: float = 1.0
    floor: float = 0.5

    def value(self, epoch: int, num_epochs: int) -> float:
        """tau at ``epoch`` (1-based) of ``num_epochs``."""
        if num_epochs <= 1:
            return self.floor
        frac = (epoch - 1) / (num_epochs - 1)
        return max(self.floor, self.start * math.exp(frac * math.log(self.floor / self.start)))

    def __call__(self, epoch: int, num_epochs: int, state: AnnealState) -> None:
        state.tau = self.value(epoch, num_epochs)


@dataclass
class PenaltySwitch:
    """The configured penalty weights, switched on once ``start`` share of the epochs is done (zero before)."""

    weights: PenaltyConfig = field(default_factory=PenaltyConfig)
    start: float = 0.0

    def __call__(self, epoch: int, num_epochs: int, state: AnnealState) -> None:
        on = (epoch - 1) / num_epochs >= self.start
        state.penalties = (
            self.weights
            if on
            else dataclasses.replace(self.weights, diversity_weight=0.0, separation_weight=0.0, entropy_weight=0.0)
        )


def default_schedules(config: FitConfig) -> list[Schedule]:
    """beta warm-up, temperature decay and the configured penalties."""
    t = config.training
    return [
        BetaWarmup(t.warmup_fraction, t.ramp_fraction),
        TemperatureDecay(t.tau_start, t.tau_floor),
        PenaltySwitch(config.penalties),
    ]
