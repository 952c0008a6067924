"""Annealing schedules: callbacks that set beta, tau and penalty weights each epoch.

A schedule is any callable ``schedule(epoch, num_epochs, state)`` that mutates the
:class:`~regime_dmm.models.base.AnnealState`; epochs count from 1. The training loop
calls every schedule at the start of every epoch and logs the resulting values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from ..config import FitConfig
from ..models.base import AnnealState


class Schedule(Protocol):
    def __call__(self, epoch: int, num_epochs: int, state: AnnealState) -> None: ...


@dataclass
class BetaWarmup:
    """KL weight: 0 for the first ``warmup`` share of epochs, then a linear ramp to 1."""

    warmup: float = 0.2
    ramp: float = 0.2

    def value(self, epoch: int, num_epochs: int) -> float:
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
        if num_epochs <= 1:
            return self.floor
        frac = (epoch - 1) / (num_epochs - 1)
        return max(self.floor, self.start * math.exp(frac * math.log(self.floor / self.start)))

    def __call__(self, epoch: int, num_epochs: int, state: AnnealState) -> None:
        state.tau = self.value(epoch, num_epochs)


@dataclass
class PenaltyWeightsSchedule:
    """Penalty weights from the configuration, switched on after ``start`` share of epochs."""

    diversity: float = 0.2
    separation: float = 0.1
    entropy: float = 0.5
    diversity_threshold: float = 0.5
    separation_scale: float = 0.5
    entropy_target: float = 0.7
    start: float = 0.0

    def __call__(self, epoch: int, num_epochs: int, state: AnnealState) -> None:
        on = (epoch - 1) / num_epochs >= self.start
        p = state.penalties
        p.diversity = self.diversity * on
        p.separation = self.separation * on
        p.entropy = self.entropy * on
        p.diversity_threshold = self.diversity_threshold
        p.separation_scale = self.separation_scale
        p.entropy_target = self.entropy_target


def default_schedules(config: FitConfig) -> list[Schedule]:
    t, p = config.training, config.penalties
    schedules: list[Schedule] = [
        BetaWarmup(t.warmup_fraction, t.ramp_fraction),
        TemperatureDecay(t.tau_start, t.tau_floor),
    ]
    if not config.model.classic:
        schedules.append(
            PenaltyWeightsSchedule(
                p.diversity_weight, p.separation_weight, p.entropy_weight,
                p.diversity_threshold, p.separation_scale, p.entropy_target,
            )
        )
    return schedules
