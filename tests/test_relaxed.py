"""Relaxed-regime DMM: inference-network guide, masking, straight-through, temperatures, CLI."""

import json

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import regime_dmm as rd
from regime_dmm.cli import main
from regime_dmm.config import PenaltyConfig
from regime_dmm.data import ModelData
from regime_dmm.guides import RelaxedGuide, inference_marginals
from regime_dmm.guides.inference_network import StructuredRegimePosterior
from regime_dmm.models import AnnealState, StepContext
from regime_dmm.models.relaxed_dmm import RelaxedRegimeChain, WindowBatch, epoch_batches

from helpers import FIT_OUTPUTS, model_and_data, stop_after

K = 4


def relaxed_config(**training):
    return rd.FitConfig().replace(
        training={"inference": "relaxed", "window_length": 16, "batch_windows": 4, **training}
    )


def ragged_frame(lengths=(60, 37)):
    frame = rd.simulate_default(0, n_days=max(lengths) + 1).frame
    parts = [g.head(n + 1) for (_, g), n in zip(frame.groupby("market", sort=False), lengths)]
    return pd.concat(parts)


def built(cfg, lengths=(60, 37)):
    """Model, guide (parameters created) and data of a ragged two-market frame."""
    pyro.clear_param_store()
    model, data, _ = model_and_data(cfg.replace(training={"min_observations": min(lengths)}), ragged_frame(lengths))
    guide = RelaxedGuide(model, {}, hidden_size=cfg.model.hidden_size)
    with torch.no_grad():
        Trace_ELBO().differentiable_loss(model.model, guide, data, StepContext())  # create the parameters
    return model, guide, data


def batches_of(cfg, data, epoch, restart=0):
    tc = cfg.training
    return epoch_batches(data.lengths.tolist(), tc.window_length, tc.batch_windows, tc.seed, restart, epoch)


def test_guide_shapes_on_a_ragged_batch():
    cfg = relaxed_config()
    model, guide, data = built(cfg)
    assert data.lengths.tolist() == [60, 37]
    batches = batches_of(cfg, data, epoch=1)
    windows = sorted((int(m), int(s)) for b in batches for m, s in zip(b.market, b.start))
    # every real day in exactly one window
    covered = {(m, t) for m, s in windows for t in range(s, min(s + 16, int(data.lengths[m])))}
    assert len(covered) == 97
    again = batches_of(cfg, data, epoch=1)  # reproducible from (seed, restart, epoch)
    assert [(b.market.tolist(), b.start.tolist(), b.scale) for b in batches] == [
        (b.market.tolist(), b.start.tolist(), b.scale) for b in again
    ]
    other = batches_of(cfg, data, epoch=2)
    assert [b.start.tolist() for b in other] != [b.start.tolist() for b in batches]
    batch = WindowBatch(torch.tensor([0, 1, 1]), torch.tensor([48, 32, 0]), 16, 2.0)  # 12 and 5 real days
    ctx = StepContext(anneal=AnnealState(tau=0.5), batch=batch)
    trace = pyro.poutine.trace(guide).get_trace(data, ctx)
    z = trace.nodes["regimes"]["value"]
    assert z.shape == (3, 16, K)
    assert torch.allclose(z.sum(-1), torch.ones(3, 16, dtype=z.dtype))
    assert trace.nodes["regimes"]["fn"].log_prob(z).shape == (3,)
    probs = ctx.guide_regime_log_probs.exp()
    assert probs.shape == (3, 16, K)
    marg = inference_marginals(guide.inference_net, model, data, guide.point_estimate(data))
    assert marg.shape == (2, 60, K)
    assert torch.allclose(marg.sum(-1), torch.ones(2, 60, dtype=marg.dtype))


def test_a_padded_day_does_not_change_the_loss():
    cfg = relaxed_config()
    model, guide, data = built(cfg, lengths=(30, 30))
    # make the networks non-trivial (their output layers start at zero)
    with torch.no_grad():
        for p in pyro.get_param_store().values():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    real = 21
    short = ModelData(
        data.x[:, :real], data.mask[:, :real], data.history[:, :real], torch.full_like(data.lengths, real)
    )
    padded_x, padded_h = data.x.clone(), data.history.clone()
    padded_x[:, real:] = 1e3  # junk on the padded days
    padded_h[:, real:] = -1e3
    mask = data.mask.clone()
    mask[:, real:] = False
    padded = ModelData(padded_x, mask, padded_h, torch.full_like(data.lengths, real))
    state = AnnealState(
        beta=0.7, tau=0.4, penalties=PenaltyConfig(diversity_weight=0.2, separation_weight=0.1, entropy_weight=0.5)
    )
    for elbo in (TraceMeanField_ELBO(), Trace_ELBO()):  # the training objective and relaxed densities
        losses = []
        for d, length in ((short, real), (padded, 30)):
            ctx = StepContext(anneal=state, batch=WindowBatch(torch.tensor([0, 1]), torch.tensor([0, 0]), length, 1.0))
            pyro.set_rng_seed(7)
            losses.append(elbo.differentiable_loss(model.model, guide, d, ctx).item())
        assert np.isfinite(losses[0])
        assert losses[0] == pytest.approx(losses[1], rel=1e-10, abs=1e-8)


def test_straight_through_samples_are_one_hot_with_gradients():
    cfg = relaxed_config(straight_through=True)
    model, guide, data = built(cfg)
    net = guide.inference_net
    h = net.encode(data.x[:, :16], data.mask[:, :16])
    q = StructuredRegimePosterior(net, h, 0.5, data.mask[:, :16], straight_through=True)
    z = q.rsample()
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(z.sum(-1), torch.ones_like(z.sum(-1)))
    assert torch.isfinite(q.log_prob(z)).all()
    (z * torch.arange(K, dtype=z.dtype)).sum().backward()
    assert net.combiner[2].weight.grad.abs().sum() > 0  # relaxed gradients reach the network
    trans = torch.full((2, 16, K, K), 1.0 / K, dtype=torch.float64)
    prior = RelaxedRegimeChain(0.5, trans[:, 0, 0], trans, torch.ones(2, 16, dtype=torch.bool), True)
    zp = prior.rsample()
    assert set(zp.unique().tolist()) <= {0.0, 1.0}


def test_relaxed_samples_finite_at_tau_0_2():
    cfg = relaxed_config()
    model, guide, data = built(cfg)
    torch.manual_seed(0)
    sticky = torch.full((K, K), 0.01 / (K - 1), dtype=torch.float64).fill_diagonal_(0.99)
    trans = sticky.expand(256, 64, K, K)
    first = torch.tensor([0.97, 0.01, 0.01, 0.01], dtype=torch.float64).expand(256, K)
    prior = RelaxedRegimeChain(0.2, first, trans, torch.ones(256, 64, dtype=torch.bool))
    z = prior.rsample()
    assert torch.isfinite(z).all() and torch.isfinite(prior.log_prob(z)).all()
    # the whole objective, model + guide, at the lowest recommended temperature
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(False):
        loss = Trace_ELBO().differentiable_loss(model.model, guide, data, StepContext(AnnealState(tau=0.2)))
    assert torch.isfinite(loss)


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("relaxed") / "prices.csv"
    frame = rd.simulate_default(5, n_days=201).frame
    frame.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_relaxed_fit_through_the_cli_writes_every_output(small_csv, tmp_path, capsys):
    out = tmp_path / "relaxed"
    rc = main(
        [
            "fit",
            "--data",
            str(small_csv),
            "--out",
            str(out),
            "--inference",
            "relaxed",
            "--epochs",
            "10",
            "--restarts",
            "1",
            "--tau-floor",
            "0.3",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Epoch 10/10 | Loss:" in printed
    for name in FIT_OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    regimes = pd.read_csv(out / "regimes.csv")
    probs = regimes[[c for c in regimes.columns if c.startswith("prob_")]]
    assert probs.shape[1] == K and probs.sum(axis=1).sub(1).abs().max() < 1e-5
    summary = json.loads((out / "summary.json").read_text())
    assert isinstance(summary["collapse"], list)
    assert summary["settings"]["training"]["inference"] == "relaxed"
    assert summary["settings"]["training"]["tau_floor"] == 0.3
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 10 and "grad_norm_inference" in history.columns
    assert np.isfinite(history["grad_norm_inference"]).all()
    # schedules as logged: beta 0 for the first 20 % of epochs then a ramp to 1; tau 1.0 down to the floor
    assert history["beta"].tolist()[:4] == [0.0, 0.0, 0.5, 1.0] and (history["beta"].iloc[3:] == 1.0).all()
    tau = history["tau"].to_numpy()
    assert tau[0] == pytest.approx(1.0) and tau[-1] == pytest.approx(0.3) and (np.diff(tau) < 0).all()
    assert np.isfinite(history["log_likelihood"]).all()


def test_cli_flags_set_the_relaxed_options():
    from regime_dmm.cli import _config, _parser

    args = _parser().parse_args(["fit", "--inference", "relaxed", "--straight-through", "--tau-floor", "0.25"])
    t = _config(args).training
    assert (t.inference, t.straight_through, t.tau_floor) == ("relaxed", True, 0.25)
    default = _config(_parser().parse_args(["fit"])).training
    assert (default.inference, default.straight_through) == ("exact", False)


@pytest.mark.slow
def test_relaxed_fit_is_reproducible_and_resumes_exactly(tmp_path):
    frame = rd.simulate_default(3, n_days=121).frame
    cfg = relaxed_config(epochs=6, restarts=1, seed=2)
    straight = rd.fit(frame, cfg)
    again = rd.fit(frame, cfg)
    pd.testing.assert_frame_equal(straight.regimes_frame(), again.regimes_frame())
    stop_after_3 = stop_after(3)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(rd.FitInterrupted):
        rd.fit(frame, cfg, checkpoint=ckpt, checkpoint_every=2, stop_requested=stop_after_3)
    resumed = rd.resume_fit(ckpt, data=frame)
    pd.testing.assert_frame_equal(straight.regimes_frame(), resumed.regimes_frame())
    pd.testing.assert_frame_equal(straight.history, resumed.history)
    assert straight.collapse == resumed.collapse
