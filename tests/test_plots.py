"""The plots module: figures, PNG files and text usage bars of a fitted model."""

from __future__ import annotations

import dataclasses
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import regime_dmm as rd
from regime_dmm import plots


@pytest.fixture(scope="module")
def fit():
    cfg = rd.FitConfig().replace(training={"epochs": 20, "restarts": 1})
    return rd.fit(None, cfg)


def _with(fit, **changes):
    return dataclasses.replace(fit, **changes)


def test_regime_colours_fixed_and_fallback():
    assert plots.regime_colours(("calm", "neutral", "volatile", "panic")) == [
        plots.REGIME_COLOURS[n] for n in ("calm", "neutral", "volatile", "panic")
    ]
    fallback = plots.regime_colours(("a", "b", "c", "d", "e"))
    assert len(fallback) == 5 and len(set(map(tuple, fallback))) == 5


def test_plot_regimes_all_and_one_market(fit):
    n = len(fit.markets)
    fig = plots.plot_regimes(fit)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * n
    legend_texts = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert set(fit.regimes) <= legend_texts

    one = plots.plot_regimes(fit, market=fit.markets[-1].name)
    assert len(one.axes) == 2
    with pytest.raises(KeyError):
        plots.plot_regimes(fit, market="no_such_market")


def test_plot_regimes_merges_runs(fit):
    m = fit.markets[0]
    fig = plots.plot_regimes(fit, market=m.name)
    top = fig.axes[0]
    labels = m.smoothed.argmax(-1)
    runs = 1 + int(np.count_nonzero(labels[1:] != labels[:-1]))
    assert len(top.patches) == runs < len(m.dates)


def test_plot_regimes_shows_the_filtered_probabilities_when_asked(fit):
    m = fit.markets[0]
    fig = plots.plot_regimes(fit, market=m.name, probabilities="filtered")
    labels = m.filtered.argmax(-1)
    assert len(fig.axes[0].patches) == 1 + int(np.count_nonzero(labels[1:] != labels[:-1]))
    assert "filtered" in fig.axes[0].get_title(loc="left")
    stacked = fig.axes[1].collections[0].get_paths()[0].vertices[:, 1]  # the calm band's outline
    assert np.allclose(np.sort(stacked)[-1], m.filtered[:, 0].max())
    with pytest.raises(ValueError, match="smoothed' or 'filtered"):
        plots.plot_regimes(fit, probabilities="viterbi")


def test_plot_regimes_with_returns_input(fit):
    markets = [dataclasses.replace(m, prices=None) for m in fit.markets]
    fig = plots.plot_regimes(_with(fit, markets=markets))
    assert len(fig.axes) == 2 * len(markets)
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), np.cumsum(markets[0].returns))
    assert fig.axes[0].get_ylabel() == "cumulative log return"


def test_plot_transition_heatmaps(fit):
    fig = plots.plot_transition_heatmaps(fit)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == len(fit.markets)
    k = len(fit.regimes)
    for ax, m in zip(fig.axes, fit.markets):
        texts = [t.get_text() for t in ax.texts]
        assert texts == [f"{v:.2f}" for v in np.asarray(m.transition).ravel()]
        assert [t.get_text() for t in ax.get_xticklabels()] == list(fit.regimes)
        assert [t.get_text() for t in ax.get_yticklabels()] == list(fit.regimes)
        assert len(texts) == k * k


def test_plot_usage(fit):
    fig = plots.plot_usage(fit)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    heights = sorted(p.get_height() for p in ax.patches)
    expected = sorted(float(u) for m in fit.markets for u in m.usage)
    np.testing.assert_allclose(heights, expected)


def test_plot_training_full_single_row_and_empty(fit):
    assert len(fit.history) > 1
    fig = plots.plot_training(fit)
    # four panels plus the twin (right) axis that carries the KL next to recon
    assert isinstance(fig, Figure) and len(fig.axes) == 5
    assert len(fig.axes[0].get_lines()) == fit.history["restart"].nunique()

    # two restarts: one loss line each
    two = pd.concat([fit.history, fit.history.assign(restart=1)], ignore_index=True)
    assert len(plots.plot_training(_with(fit, history=two)).axes[0].get_lines()) == 2

    # classic mode: a single row
    single = plots.plot_training(_with(fit, history=fit.history.iloc[[-1]].reset_index(drop=True)))
    assert len(single.axes) == 5
    assert single.axes[0].get_lines()[0].get_marker() == "o"

    empty = plots.plot_training(_with(fit, history=pd.DataFrame()))
    assert len(empty.axes) == 4
    assert all(ax.texts and ax.texts[0].get_text() == "no training history" for ax in empty.axes)


def test_save_all_writes_readable_pngs(fit, tmp_path):
    out = tmp_path / "plots"
    paths = plots.save_all(fit, out)
    assert [p.name for p in paths] == [
        "regimes.png",
        "regimes_filtered.png",
        "transitions.png",
        "usage.png",
        "training.png",
    ]
    for path in paths:
        assert path.parent == out and path.stat().st_size > 0
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_usage_bars_text_matches_usage(fit):
    width = 24
    text = plots.usage_bars_text(fit, width=width)
    lines = text.splitlines()
    assert len(lines) == len(fit.markets) * (1 + len(fit.regimes))
    pattern = re.compile(r"^  (\S+)\s+([█░]+)\s+(\d+\.\d)%$")
    i = 0
    for m in fit.markets:
        assert lines[i] == m.name
        i += 1
        for k, name in enumerate(fit.regimes):
            match = pattern.match(lines[i])
            assert match, lines[i]
            assert match.group(1) == name
            assert len(match.group(2)) == width
            assert match.group(2).count("█") == round(float(m.usage[k]) * width)
            assert float(match.group(3)) == pytest.approx(round(100 * float(m.usage[k]), 1), abs=1e-9)
            i += 1
    for name in fit.regimes:
        assert name in text
    with pytest.raises(ValueError):
        plots.usage_bars_text(fit, width=0)


def test_volatility_table_puts_the_markets_sds_side_by_side_in_input_units(fit):
    lines = plots.volatility_table_text(fit).splitlines()
    assert "relative to each market" in lines[0]
    assert lines[1].split() == ["market", *fit.regimes]
    n = len(fit.markets)
    for line, m in zip(lines[2 : 2 + n], fit.markets, strict=True):
        name, *values = line.split()
        assert name == m.name
        np.testing.assert_allclose([float(v) for v in values], m.emission["return_sd"], rtol=5e-3)
    shared = fit.shared_names()
    if any(names != list(fit.regimes) for names in shared.values()):  # then the names on one ladder follow
        assert "one ladder" in lines[2 + n]
        for line, m in zip(lines[3 + n :], fit.markets, strict=True):
            assert line.split() == [m.name, *shared[m.name]]
    else:
        assert len(lines) == 2 + n
