"""Penalties at their reference points and annealing schedules at reference epochs."""

import pytest
import torch

from regime_dmm.config import FitConfig
from regime_dmm.models.base import AnnealState
from regime_dmm.models.penalties import diversity_penalty, entropy_penalty, separation_penalty
from regime_dmm.training.annealing import BetaWarmup, TemperatureDecay, default_schedules


def test_diversity_zero_below_threshold_and_reference_value():
    assert diversity_penalty(torch.tensor([[0.5, 0.3, 0.15, 0.05]]), 0.2).item() == 0.0
    assert diversity_penalty(torch.tensor([[0.8, 0.1, 0.05, 0.05]]), 0.2).item() == pytest.approx(0.12)
    grows = [diversity_penalty(torch.tensor([[u, 1 - u]]), 0.2).item() for u in (0.6, 0.7, 0.9, 1.0)]
    assert grows == sorted(grows) and grows[-1] == pytest.approx(0.2)
    # one term per market
    two = torch.tensor([[0.8, 0.2], [0.8, 0.2]])
    assert diversity_penalty(two, 0.2).item() == pytest.approx(0.24)


def test_separation_penalises_alike_regimes_only():
    scale = torch.tensor([[[1.0], [1.0]]])
    alike = separation_penalty(torch.zeros(1, 2, 1), scale, 0.1)
    assert alike.item() == pytest.approx(0.1)
    apart = separation_penalty(torch.tensor([[[0.0], [0.0]]]), torch.tensor([[[1.0], [20.0]]]), 0.1)
    assert apart.item() < 1e-6


def test_entropy_penalty_is_squared_distance_from_target():
    assert entropy_penalty(torch.tensor([0.7]), 0.5).item() == pytest.approx(0.0)
    assert entropy_penalty(torch.tensor([1.2]), 0.5).item() == pytest.approx(0.5 * 0.25)
    assert entropy_penalty(torch.tensor([0.2, 1.2]), 0.5).item() == pytest.approx(0.25)


def test_beta_warmup_reference_epochs():
    sched = BetaWarmup(warmup=0.2, ramp=0.2)
    assert [sched.value(e, 200) for e in (1, 20, 40)] == [0.0, 0.0, 0.0]
    assert sched.value(41, 200) == pytest.approx(1 / 40)
    assert sched.value(60, 200) == pytest.approx(0.5)
    assert sched.value(80, 200) == pytest.approx(1.0)
    assert sched.value(200, 200) == 1.0
    values = [sched.value(e, 200) for e in range(1, 201)]
    assert values == sorted(values)


def test_temperature_decays_to_floor():
    sched = TemperatureDecay(1.0, 0.5)
    assert sched.value(1, 200) == pytest.approx(1.0)
    assert sched.value(200, 200) == pytest.approx(0.5)
    assert 0.5 < sched.value(100, 200) < 1.0


def test_default_schedules_set_state_from_config():
    cfg = FitConfig().replace(penalties={"diversity_weight": 0.3, "entropy_target": 0.9})
    state = AnnealState()
    for s in default_schedules(cfg):
        s(1, 100, state)
    assert state.beta == 0.0 and state.tau == pytest.approx(1.0)
    assert state.penalties.diversity_weight == pytest.approx(0.3)
    assert state.penalties.entropy_target == pytest.approx(0.9)
