"""ArviZ export of a fit: groups, coordinates, point estimate vs posterior draws, LOO/WAIC, NetCDF."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

import regime_dmm as rd
from regime_dmm import arviz_export
from regime_dmm.arviz_export import load_netcdf, obs_index, save_netcdf, to_inference_data
from regime_dmm.training.svi import isolated_parameters

az = pytest.importorskip("arviz")

NUM_SAMPLES = 40


def _ragged_frame(n_days: int = 300):
    """The simulated panel with the second market's first 60 days dropped: unequal lengths."""
    frame = rd.simulate_default(0, n_days=n_days, no_trade_share=0, jump_prob=0).frame  # every day observed
    markets = list(pd.unique(frame["market"]))
    second = frame[frame["market"] == markets[1]]
    keep = frame["market"] != markets[1]
    keep |= frame["date"] >= second["date"].sort_values().iloc[60]
    out = frame[keep].reset_index(drop=True)
    out.attrs = dict(frame.attrs)
    return out


@pytest.fixture(scope="module")
def frame():
    return _ragged_frame()


@pytest.fixture(scope="module")
def config():
    return rd.FitConfig().replace(training={"epochs": 25, "restarts": 1})


@pytest.fixture(scope="module")
def fit_map(frame, config):
    return rd.fit(frame, config)


@pytest.fixture(scope="module")
def fit_normal(frame, config):
    return rd.fit(frame, config.replace(training={"guide": "normal"}))


@pytest.fixture(scope="module")
def idata_map(fit_map):
    return to_inference_data(fit_map, seed=3)


@pytest.fixture(scope="module")
def idata_normal(fit_normal):
    return to_inference_data(fit_normal, num_samples=NUM_SAMPLES, seed=3)


@pytest.fixture(scope="module")
def fit_classic(frame):
    from regime_dmm.training import variants

    quick = functools.partial(variants.train_lbfgs, max_iter=15)  # convergence is not under test
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(variants, "train_lbfgs", quick)
        return rd.fit(frame, rd.FitConfig().replace(model={"classic": True}, training={"restarts": 1}))


def _own_days(idata, fit, name):
    dates = pd.DatetimeIndex(idata.posterior["date"].values)
    return dates.isin(fit.market(name).dates)


# ---------------------------------------------------------------------------------------


def test_groups_and_attrs(idata_map, idata_normal, fit_map):
    for idata, guide in ((idata_map, "map"), (idata_normal, "normal")):
        assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood", "observed_data"}
        assert idata.attrs["package_version"] == rd.__version__
        assert list(idata.attrs["regimes"]) == list(fit_map.regimes)
        assert idata.attrs["guide"] == guide
        assert idata.attrs["seed"] == 3
        assert idata.posterior.attrs["guide"] == guide
    expected = {
        "transition_matrix",
        "base_transition_matrix",
        "initial_distribution",
        "return_mean",
        "return_sd",
        "smoothed_probs",
    }
    assert expected <= set(idata_map.posterior.data_vars)
    assert set(idata_map.observed_data.data_vars) == {"returns", "vol"}
    assert set(idata_map.posterior_predictive.data_vars) == {"returns"}
    assert set(idata_map.log_likelihood.data_vars) == {"returns"}


def test_dims_and_coords(idata_map, fit_map):
    post = idata_map.posterior
    names = [m.name for m in fit_map.markets]
    assert list(post["market"].values) == names
    assert list(post["regime"].values) == list(fit_map.regimes)
    assert list(post["regime_to"].values) == list(fit_map.regimes)
    union = pd.DatetimeIndex(sorted(set().union(*(set(m.dates) for m in fit_map.markets))))
    assert pd.DatetimeIndex(post["date"].values).equals(union)
    assert len(fit_map.markets[0].dates) != len(fit_map.markets[1].dates)  # ragged on purpose
    assert post["transition_matrix"].dims == ("chain", "draw", "market", "regime", "regime_to")
    assert post["base_transition_matrix"].dims == ("chain", "draw", "market", "regime", "regime_to")
    assert post["initial_distribution"].dims == ("chain", "draw", "market", "regime")
    assert post["return_mean"].dims == ("chain", "draw", "market", "regime")
    assert post["return_sd"].dims == ("chain", "draw", "market", "regime")
    assert post["smoothed_probs"].dims == ("chain", "draw", "market", "date", "regime")
    assert idata_map.observed_data["returns"].dims == ("market", "date")
    assert idata_map.posterior_predictive["returns"].dims == ("chain", "draw", "market", "date")
    ll = idata_map.log_likelihood
    assert ll["returns"].dims == ("chain", "draw", "obs")
    assert ll.sizes["obs"] == sum(int(m.observed.sum()) for m in fit_map.markets)  # masked days have no observation
    assert ll["obs_market"].dims == ("obs",) and ll["obs_date"].dims == ("obs",)
    for m in fit_map.markets:
        idx = obs_index(idata_map, m.name)
        assert pd.DatetimeIndex(ll["obs_date"].values[idx]).equals(pd.DatetimeIndex(m.dates))


def test_smoothed_sum_to_one_on_own_dates(idata_map, idata_normal, fit_map):
    for idata in (idata_map, idata_normal):
        for m in fit_map.markets:
            sp = idata.posterior["smoothed_probs"].sel(market=m.name).values  # (C, S, D, K)
            own = _own_days(idata, fit_map, m.name)
            np.testing.assert_allclose(sp[:, :, own].sum(-1), 1.0, atol=1e-9)
            assert np.isnan(sp[:, :, ~own]).all()
            assert (~own).any()  # the other market's dates exist


def test_map_is_one_draw_and_matches_results(idata_map, fit_map):
    post = idata_map.posterior
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == 1
    note = post.attrs["note"]
    assert "point estimate" in note and "MAP" in note and "one draw" in note
    for m in fit_map.markets:
        own = _own_days(idata_map, fit_map, m.name)
        sel = post.sel(market=m.name).isel(chain=0, draw=0)
        np.testing.assert_allclose(sel["smoothed_probs"].values[own], m.smoothed, atol=1e-10)
        np.testing.assert_allclose(sel["transition_matrix"].values, m.transition, atol=1e-10)
        np.testing.assert_allclose(sel["base_transition_matrix"].values, m.base_transition, atol=1e-10)
        np.testing.assert_allclose(sel["initial_distribution"].values, m.initial, atol=1e-10)
        np.testing.assert_allclose(sel["return_mean"].values, m.emission["return_mean"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sel["return_sd"].values, m.emission["return_sd"], rtol=1e-9)


def test_map_log_likelihood_sums_to_market_log_likelihood(idata_map, fit_map):
    ll = idata_map.log_likelihood["returns"].values
    assert np.isfinite(ll).all()
    for m in fit_map.markets:
        total = ll[0, 0, obs_index(idata_map, m.name)].sum()
        assert total == pytest.approx(m.log_likelihood, abs=1e-6)


def test_normal_guide_draws_differ(idata_normal):
    post = idata_normal.posterior
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == NUM_SAMPLES
    assert "draws" in post.attrs["note"] and "point estimate" not in post.attrs["note"]
    for name in ("return_sd", "return_mean", "transition_matrix", "initial_distribution"):
        values = post[name].values[0]
        assert np.all(np.isfinite(values))
        assert values.std(0).max() > 0, name
        assert not np.allclose(values[0], values[1])
    sp = post["smoothed_probs"].values[0]
    assert np.nanmax(np.abs(sp[0] - sp[1])) > 0
    ll = idata_normal.log_likelihood["returns"].values[0]
    assert np.isfinite(ll).all() and ll.std(0).max() > 0


def test_return_sd_ordered_in_every_draw(idata_map, idata_normal):
    for idata in (idata_map, idata_normal):
        sd = idata.posterior["return_sd"].values  # (C, S, M, K)
        assert (sd > 0).all()
        assert (np.diff(sd, axis=-1) > 0).all()


def test_loo_and_waic_run_with_normal_guide(idata_normal):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto-k warnings with few draws are fine here
        loo = az.loo(idata_normal, pointwise=True)
        waic = az.waic(idata_normal, pointwise=True)
    n_obs = idata_normal.log_likelihood.sizes["obs"]
    assert np.isfinite(loo.elpd_loo) and np.isfinite(loo.se)
    assert np.isfinite(waic.elpd_waic) and np.isfinite(waic.se)
    assert loo.n_data_points == n_obs and loo.pareto_k.shape == (n_obs,)
    # elpd is close to the total log-likelihood (a handful of effective parameters)
    total = idata_normal.log_likelihood["returns"].sum("obs").mean().item()
    assert abs(loo.elpd_loo - total) < 0.05 * abs(total) + 50


def test_observed_and_predictive(idata_map, idata_normal, fit_map):
    obs = idata_map.observed_data
    for m in fit_map.markets:
        own = _own_days(idata_map, fit_map, m.name)
        returns = obs["returns"].sel(market=m.name).values
        np.testing.assert_allclose(returns[own], m.returns)
        assert np.isnan(returns[~own]).all()
        vol = obs["vol"].sel(market=m.name).values
        assert np.isfinite(vol[own]).all() and np.isnan(vol[~own]).all()
        # log realised vol in input units: about log |return| scale, not z-scored
        assert np.nanmedian(vol[own]) < np.log(np.nanstd(m.returns)) + 1.0
        for idata in (idata_map, idata_normal):
            pred = idata.posterior_predictive["returns"].sel(market=m.name).values  # (C, S, D)
            assert np.isfinite(pred[:, :, own]).all() and np.isnan(pred[:, :, ~own]).all()
            # input units: the spread of simulated returns matches the data's within a factor 2
            ratio = np.std(pred[:, :, own]) / np.std(m.returns)
            assert 0.5 < ratio < 2.0


def test_seeded_and_leaves_param_store_and_rng_alone(fit_normal, fit_map):
    store = pyro.get_param_store()
    with isolated_parameters():  # a session's own parameters are in the store
        pyro.param("session.weight", torch.arange(3.0))
        before = {k: v.detach().clone() for k, v in store.named_parameters()}
        rng_before = torch.get_rng_state().clone()
        a = to_inference_data(fit_normal, num_samples=5, seed=11)
        b = to_inference_data(fit_normal, num_samples=5, seed=11)
        c = to_inference_data(fit_normal, num_samples=5, seed=12)
        after = dict(store.named_parameters())
    assert set(after) == set(before) == {"session.weight"}
    assert all(torch.equal(before[k], after[k].detach()) for k in before)
    assert torch.equal(torch.get_rng_state(), rng_before)
    np.testing.assert_array_equal(a.posterior["return_sd"].values, b.posterior["return_sd"].values)
    np.testing.assert_array_equal(a.posterior_predictive["returns"].values, b.posterior_predictive["returns"].values)
    assert not np.array_equal(a.posterior["return_sd"].values, c.posterior["return_sd"].values)


def test_netcdf_round_trip(idata_normal, tmp_path):
    assert arviz_export.netcdf_engine() in ("h5netcdf", "netcdf4")
    path = save_netcdf(idata_normal, tmp_path / "sub" / "posterior.nc")
    assert path.is_file() and path.stat().st_size > 0
    back = load_netcdf(path)
    assert set(back.groups()) == set(idata_normal.groups())
    for group in idata_normal.groups():
        original, loaded = idata_normal[group], back[group]
        assert set(loaded.data_vars) == set(original.data_vars)
        for name in original.data_vars:
            np.testing.assert_array_equal(loaded[name].values, original[name].values)
    assert list(back.posterior["market"].values) == list(idata_normal.posterior["market"].values)
    assert list(back.posterior["regime"].values) == list(idata_normal.posterior["regime"].values)
    np.testing.assert_array_equal(back.posterior["date"].values, idata_normal.posterior["date"].values)
    np.testing.assert_array_equal(
        back.log_likelihood["obs_market"].values.astype(str),
        idata_normal.log_likelihood["obs_market"].values.astype(str),
    )
    assert back.posterior.attrs["note"] == idata_normal.posterior.attrs["note"]
    assert list(back.attrs["regimes"]) == list(idata_normal.attrs["regimes"])
    # the file is closed after loading: it can be overwritten at once
    save_netcdf(idata_normal, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isfinite(az.waic(back).elpd_waic)


def test_classic_mode_point_estimate(fit_classic):
    idata = to_inference_data(fit_classic, num_samples=7)
    post = idata.posterior
    assert post.sizes["draw"] == 1
    assert "point estimate" in post.attrs["note"] and "one draw" in post.attrs["note"]
    assert idata.attrs["guide"] == "classic"
    assert "vol" not in idata.observed_data  # classic mode builds the return feature only
    for m in fit_classic.markets:
        total = idata.log_likelihood["returns"].values[0, 0, obs_index(idata, m.name)].sum()
        assert total == pytest.approx(m.log_likelihood, abs=1e-6)
        sel = post.sel(market=m.name).isel(chain=0, draw=0)
        np.testing.assert_allclose(sel["return_sd"].values, m.emission["return_sd"], rtol=1e-9)
        np.testing.assert_allclose(sel["transition_matrix"].values, m.transition, atol=1e-10)


def test_requires_live_fit(fit_map):
    import dataclasses

    with pytest.raises(arviz_export.ExportError):
        to_inference_data(dataclasses.replace(fit_map, fitted=None))
    with pytest.raises(ValueError):
        to_inference_data(fit_map, num_samples=0)


def test_student_t_emission_exports_df():
    frame = rd.simulate_default(1, n_days=200).frame
    cfg = rd.FitConfig().replace(model={"emission": "studentt"}, training={"epochs": 5, "restarts": 1})
    fit = rd.fit(frame, cfg)
    idata = to_inference_data(fit)
    assert idata.attrs["emission"] == "studentt"
    df = idata.posterior["return_df"]
    assert df.dims == ("chain", "draw", "market") and (df.values > 2).all()
    pred = idata.posterior_predictive["returns"].values
    assert np.isfinite(pred[~np.isnan(pred)]).all()
    for m in fit.markets:
        total = idata.log_likelihood["returns"].values[0, 0, obs_index(idata, m.name)].sum()
        assert total == pytest.approx(m.log_likelihood, abs=1e-6)
        np.testing.assert_allclose(df.sel(market=m.name).values.ravel(), m.emission["return_df"][:1])
