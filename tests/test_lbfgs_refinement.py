"""Training that ends in L-BFGS (``training.optimizer: lbfgs``, issue #18): the annealing's Adam epochs, then
full-batch L-BFGS on the final objective until it stops improving; checkpoints inside it resume exactly."""

import math

import pandas as pd
import pytest

import regime_dmm as rd
from regime_dmm.errors import ConfigError
from regime_dmm.fitting import load_resume_state, resume_fit
from regime_dmm.training.svi import CONVERGED_GAIN, CONVERGED_WINDOW

from helpers import stop_after


@pytest.fixture(scope="module")
def frame():
    return rd.simulate_default(2, n_days=400).frame


def config(**training):
    base = {"epochs": 200, "anneal_epochs": 10, "restarts": 1, "seed": 1}
    return rd.FitConfig().replace(training={**base, **training})


@pytest.mark.slow
def test_annealing_then_lbfgs_to_convergence_beats_adam_on_the_same_budget(frame):
    refined = rd.fit(frame, config())
    adam = rd.fit(frame, config(optimizer="adam"))
    h = refined.history
    # the warm-up and ramp: the first anneal_epochs epochs, by Adam, beta reaching 1 at the last of them
    assert (h["optimizer"].iloc[:10] == "adam").all() and (h["optimizer"].iloc[10:] == "lbfgs").all()
    assert h["beta"].iloc[9] == pytest.approx(1.0) and h["beta"].iloc[8] < 0.95 and h["beta"].iloc[0] == 0.0
    (restart,) = refined.restarts
    assert restart["stopped_early"] and restart["epochs"] < 200  # stopped by convergence (~135), not the budget
    losses = h.loc[h["optimizer"] == "lbfgs", "loss"].to_numpy()
    assert losses[-CONVERGED_WINDOW - 1] - losses[-1] < CONVERGED_GAIN * abs(losses[-1])
    assert (losses[1:] <= losses[:-1] + 1e-9).all()  # every L-BFGS iteration keeps or lowers the objective
    assert (adam.history["optimizer"] == "adam").all()
    # the same objective at the end (beta = 1, penalties on): L-BFGS gets lower
    assert refined.restarts[0]["final_loss"] < adam.restarts[0]["final_loss"] - 1.0


@pytest.mark.slow
def test_a_run_stopped_inside_lbfgs_resumes_to_the_same_result(frame, tmp_path):
    cfg = config(epochs=30)
    straight = rd.fit(frame, cfg)
    stop_at_15 = stop_after(15)  # polled once per epoch: stops after epoch 15, the fifth L-BFGS iteration
    ckpt = tmp_path / "run.pt"
    with pytest.raises(rd.FitInterrupted):
        rd.fit(frame, cfg, checkpoint=ckpt, checkpoint_every=100, stop_requested=stop_at_15)
    state = load_resume_state(ckpt)
    assert state.run.current.loop.epoch == 15 and state.run.current.loop.lbfgs is not None
    resumed = resume_fit(ckpt, data=frame)
    pd.testing.assert_frame_equal(straight.history, resumed.history)
    pd.testing.assert_frame_equal(straight.regimes_frame(), resumed.regimes_frame())


def test_lbfgs_needs_a_deterministic_objective_else_adam(frame):
    normal = rd.fit(frame, config(epochs=4, anneal_epochs=2, guide="normal"))
    assert (normal.history["optimizer"] == "adam").all()
    straight = rd.fit(frame, config(epochs=4, anneal_epochs=0))  # no annealing: L-BFGS from the first epoch
    assert (straight.history["optimizer"] == "lbfgs").all() and (straight.history["beta"] == 1.0).all()
    assert math.isfinite(straight.restarts[0]["final_loss"])


def test_bad_optimizer_settings_are_refused():
    with pytest.raises(ConfigError, match="training.optimizer"):
        rd.FitConfig().replace(training={"optimizer": "sgd"})
    with pytest.raises(ConfigError, match="training.anneal_epochs"):
        rd.FitConfig().replace(training={"anneal_epochs": -1})


def _failing_trials(monkeypatch, fails) -> dict:
    """Make L-BFGS trial evaluations fail (a non-finite loss) where ``fails(iteration, call)`` says so (the
    annealing's Adam epochs count as iteration 0)."""
    import regime_dmm.training.svi as svi

    count = {"iteration": 0, "call": 0, "failed": 0}
    iteration, objective = svi._lbfgs_iteration, svi._objective

    def counted_iteration(*args, **kwargs):
        count["iteration"] += 1
        count["call"] = 0
        return iteration(*args, **kwargs)

    def failing_objective(*args, **kwargs):
        loss, ctx = objective(*args, **kwargs)
        count["call"] += 1
        if fails(count["iteration"], count["call"]):
            count["failed"] += 1
            return loss * float("nan"), ctx
        return loss, ctx

    monkeypatch.setattr(svi, "_lbfgs_iteration", counted_iteration)
    monkeypatch.setattr(svi, "_objective", failing_objective)
    return count


@pytest.mark.slow
def test_a_failed_trial_point_is_backed_off_from(frame, monkeypatch):
    # the first trial of every other iteration fails: the line search must back off, not stall
    count = _failing_trials(monkeypatch, lambda it, call: it >= 1 and it % 2 == 0 and call == 1)
    faulty = rd.fit(frame, config(epochs=60))
    assert count["failed"] > 5
    assert not faulty.faults  # trial points are not faults: the accepted steps are all finite
    lbfgs = faulty.history[faulty.history["optimizer"] == "lbfgs"]["loss"].to_numpy()
    assert (lbfgs[1:] < lbfgs[:-1]).sum() > 0.8 * (len(lbfgs) - 1)  # it keeps improving
    annealed = faulty.history["loss"].iloc[faulty.history["optimizer"].eq("lbfgs").idxmax()]
    assert faulty.restarts[0]["final_loss"] < annealed - 10.0  # far below where the annealing left it


@pytest.mark.slow
def test_lbfgs_that_cannot_move_keeps_its_last_parameters(frame, monkeypatch):
    # from the 4th iteration on, every new evaluation fails: the first comes from the previous line search
    _failing_trials(monkeypatch, lambda it, call: it >= 4)
    fit = rd.fit(frame, config(epochs=60), log=lambda line: lines.append(line))
    (restart,) = fit.restarts
    assert restart["status"] == "ok" and restart["stopped_early"] and restart["epochs"] < 60
    assert any("L-BFGS cannot move" in line for line in lines)
    assert math.isfinite(fit.log_likelihood)


lines: list[str] = []
