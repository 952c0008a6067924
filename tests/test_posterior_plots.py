"""Posterior-uncertainty plots of an exported fit: figures and PNG files."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.figure import Figure

from regime_dmm import posterior_plots as pp
from regime_dmm.arviz_export import load_netcdf, save_netcdf, to_inference_data

az = pytest.importorskip("arviz")


@pytest.fixture(scope="module")
def fit(small_fit):
    return small_fit(0, 250, training={"epochs": 20, "restarts": 1, "guide": "normal"})


@pytest.fixture(scope="module")
def idata(fit):
    return to_inference_data(fit, num_samples=20, seed=0)


@pytest.fixture(scope="module")
def idata_one(idata):
    """A single-draw export (what the map guide gives)."""
    return idata.isel(draw=slice(0, 1))


def test_hdi_bounds_matches_arviz():
    rng = np.random.default_rng(0)
    samples = rng.gamma(2.0, size=(200, 3, 2))
    lower, upper = pp.hdi_bounds(samples, 0.9)
    assert lower.shape == upper.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = az.hdi(samples[:, i, j], hdi_prob=0.9)
            np.testing.assert_allclose([lower[i, j], upper[i, j]], expected)
    one_lo, one_hi = pp.hdi_bounds(samples[:1], 0.9)
    np.testing.assert_array_equal(one_lo, samples[0])
    np.testing.assert_array_equal(one_hi, samples[0])
    with pytest.raises(ValueError):
        pp.hdi_bounds(samples, 1.5)


def test_plot_probability_hdi(idata, idata_one, fit):
    k = len(fit.regimes)
    for data in (idata, idata_one):
        fig = pp.plot_probability_hdi(data, fit.markets[0].name, hdi_prob=0.8)
        assert isinstance(fig, Figure)
        assert len(fig.axes) == k
        assert [ax.get_ylabel() for ax in fig.axes] == [f"p({r})" for r in fit.regimes]
        line = fig.axes[0].lines[0]
        assert len(line.get_xdata()) == len(fit.markets[0].dates)  # the market's own dates only
    bands = [c for c in pp.plot_probability_hdi(idata, 1).axes[0].collections]
    assert bands  # the HDI band is drawn with several draws
    assert not pp.plot_probability_hdi(idata_one, 1).axes[0].collections  # and not with one
    with pytest.raises(KeyError):
        pp.plot_probability_hdi(idata, "no_such_market")


def test_plot_transition_uncertainty(idata, fit):
    fig = pp.plot_transition_uncertainty(idata)
    assert isinstance(fig, Figure)
    k = len(fit.regimes)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == len(fit.markets)
    texts = [t.get_text() for t in heatmaps[0].texts]
    assert len(texts) == k * k and all("±" in t for t in texts)
    values = idata.posterior["transition_matrix"].isel(market=0).values[0]
    mean, sd = values.mean(0), values.std(0)
    assert texts[1] == f"{mean[0, 1]:.3f}\n± {sd[0, 1]:.3f}"
    base = pp.plot_transition_uncertainty(idata, var_name="base_transition_matrix")
    assert isinstance(base, Figure)


def test_a_single_draw_shows_no_uncertainty_it_does_not_have(idata_one):
    """A MAP fit exports one draw: its cells show the value alone (0.4.0 printed "± 0.000" in every cell)."""
    fig = pp.plot_transition_uncertainty(idata_one)
    heatmaps = [ax for ax in fig.axes if ax.images]
    texts = [t.get_text() for ax in heatmaps for t in ax.texts]
    assert texts and not any("±" in t for t in texts)
    values = idata_one.posterior["transition_matrix"].isel(market=0).values[0, 0]
    assert texts[1] == f"{values[0, 1]:.3f}"
    assert "no posterior spread" in fig._suptitle.get_text()


def test_plot_ppc(idata, idata_one, fit):
    for data in (idata, idata_one):
        fig = pp.plot_ppc(data, num_pp_samples=10)
        assert isinstance(fig, Figure)
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert len(visible) == len(fit.markets)
        assert [ax.get_title() for ax in visible] == [m.name for m in fit.markets]
        assert len(visible[0].lines) >= 2  # observed and at least one predictive density


def test_plot_volatility_forest(idata, idata_one, fit):
    for data in (idata, idata_one):
        fig = pp.plot_volatility_forest(data)
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert ax.get_xscale() == "log"
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(labels) == len(fit.markets) * len(fit.regimes)
        assert labels[0] == f"{fit.markets[0].name}: {fit.regimes[0]}"


def test_save_posterior_plots(idata, fit, tmp_path):
    paths = pp.save_posterior_plots(idata, tmp_path / "plots")
    expected = [f"probability_hdi_{m.name}.png" for m in fit.markets]
    expected += ["transition_uncertainty.png", "ppc.png", "volatility_forest.png"]
    assert [p.name for p in paths] == expected
    for path in paths:
        assert path.is_file() and path.stat().st_size > 5000
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.01  # not blank


def test_plots_from_netcdf(idata, tmp_path):
    back = load_netcdf(save_netcdf(idata, tmp_path / "p.nc"))
    paths = pp.save_posterior_plots(back, tmp_path / "from_file")
    assert all(p.stat().st_size > 0 for p in paths)
