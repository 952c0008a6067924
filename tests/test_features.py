"""Tests of regime_dmm.data.features: feature values, normalisation, the padded panel."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from regime_dmm.config import DataConfig
from regime_dmm.data import (
    FeaturePipeline,
    FeatureSpec,
    MarketSeries,
    build_features,
    load_prices,
    make_panel,
)
from regime_dmm.errors import DataError

# These tests check the features of the rows as given: repeated prices are zero returns here
# (the default masks them as days without a trade; see test_observations.py).
KEEP = DataConfig(stale="keep")

PRICES = [100.0, 110.0, 99.0, 99.0, 108.9, 108.9]


def price_frame(prices=PRICES, market="m", start="2021-01-04", freq="B") -> pd.DataFrame:
    dates = pd.date_range(start, periods=len(prices), freq=freq)
    return load_prices(pd.DataFrame({"date": dates, "market": market, "price": prices}), min_observations=2)


def hand_features(returns: list[float], window: int) -> tuple[list[float], list[float]]:
    """Straightforward loop version of the return and vol features."""
    n = len(returns)
    mean = sum(returns) / n
    sd = math.sqrt(sum((r - mean) ** 2 for r in returns) / n)
    eps = 1e-3 * sd
    vol = []
    for t in range(n):
        win = returns[max(0, t - window + 1) : t + 1]
        vol.append(math.log(math.sqrt(sum(r * r for r in win) / len(win)) + eps))
    return list(returns), vol


def test_features_match_hand_computation():
    (s,) = build_features(price_frame(), vol_window=3, normalise=False, rules=KEEP)
    returns = [math.log(PRICES[i + 1] / PRICES[i]) for i in range(len(PRICES) - 1)]
    ret, vol = hand_features(returns, 3)
    assert s.name == "m"
    assert s.length == 5
    assert s.feature_names == ("return", "vol")
    np.testing.assert_allclose(s.returns, returns, rtol=1e-12)
    np.testing.assert_allclose(s.features[:, 0], ret, rtol=1e-12)
    np.testing.assert_allclose(s.features[:, 1], vol, rtol=1e-12)
    np.testing.assert_array_equal(s.feature_mean, [0.0, 0.0])
    np.testing.assert_array_equal(s.feature_std, [1.0, 1.0])
    # dates and prices are those of the return dates (first price dropped)
    assert s.dates.equals(pd.date_range("2021-01-05", periods=5, freq="B"))
    np.testing.assert_allclose(s.prices, PRICES[1:])
    assert s.features.dtype == np.float64 and s.features.shape == (5, 2)


def test_zero_returns_give_finite_vol():
    prices = [100, 101, 101, 101, 101, 101, 101, 100, 100]
    (s,) = build_features(price_frame(prices), vol_window=2, normalise=False, rules=KEEP)
    assert np.all(np.isfinite(s.features))
    eps = 1e-3 * np.std(s.returns)
    assert s.features[3, 1] == pytest.approx(math.log(eps))  # two zero returns in the window


def test_window_one_is_log_abs_return():
    (s,) = build_features(price_frame(), vol_window=1, normalise=False, features=("vol",), rules=KEEP)
    eps = 1e-3 * np.std(s.returns)
    np.testing.assert_allclose(s.features[:, 0], np.log(np.abs(s.returns) + eps))


def test_return_input_used_as_given():
    returns = [0.01, -0.02, 0.0, 0.03, -0.01]
    df = load_prices(
        pd.DataFrame({"date": pd.date_range("2022-01-01", periods=5), "market": "r", "return": returns}),
        min_observations=5,
    )
    (s,) = build_features(df, features=("return",), normalise=False, rules=KEEP)
    assert s.prices is None
    assert s.length == 5
    assert s.dates.equals(pd.date_range("2022-01-01", periods=5))
    np.testing.assert_array_equal(s.returns, returns)
    np.testing.assert_array_equal(s.features[:, 0], returns)
    assert s.feature_names == ("return",)


def test_normalisation_stats_map_back():
    raw = build_features(price_frame(), vol_window=3, normalise=False, rules=KEEP)[0]
    (s,) = build_features(price_frame(), vol_window=3, normalise=True, rules=KEEP)
    np.testing.assert_allclose(s.features.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(s.features.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(s.feature_mean, raw.features.mean(axis=0))
    np.testing.assert_allclose(s.feature_std, raw.features.std(axis=0))
    pipe = FeaturePipeline.fit(price_frame(), FeatureSpec(("return", "vol"), ("return",), 3, True, 1, KEEP))
    for i, name in enumerate(s.feature_names):
        np.testing.assert_allclose(pipe.to_input_units("m", i, s.features[:, i]), raw.features[:, i], rtol=1e-12)
        np.testing.assert_allclose(pipe.to_input_units("m", name, s.features[:, i]), raw.features[:, i], rtol=1e-12)
    # tensors keep their type; scales only get multiplied
    back = pipe.to_input_units("m", "return", torch.tensor(s.features[:, 0]))
    assert isinstance(back, torch.Tensor)
    torch.testing.assert_close(back, torch.tensor(s.returns))
    assert pipe.scale_to_input_units("m", 0, 2.0) == pytest.approx(2.0 * s.feature_std[0])
    scaled = pipe.scale_to_input_units("m", "vol", np.array([1.0, 0.5]))
    np.testing.assert_allclose(scaled, [s.feature_std[1], 0.5 * s.feature_std[1]])


def test_market_order_and_multiple_markets():
    a = price_frame(PRICES, market="zeta")
    b = price_frame([1.0, 2.0, 1.5, 1.7], market="alpha", freq="D")
    df = load_prices(pd.concat([a, b], ignore_index=True), min_observations=2)
    series = build_features(df, rules=KEEP)
    assert [s.name for s in series] == ["zeta", "alpha"]
    assert [s.length for s in series] == [5, 3]


def test_bad_options():
    df = price_frame()
    with pytest.raises(ValueError, match="vol_window"):
        build_features(df, vol_window=0, rules=KEEP)
    with pytest.raises(ValueError, match="did you mean 'vol'"):
        build_features(df, features=("return", "vola"), rules=KEEP)
    with pytest.raises(ValueError):
        build_features(df, features=(), rules=KEEP)


def test_constant_series_rejected():
    df = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=4), "market": "c", "price": [5.0] * 4})
    with pytest.raises(DataError, match="'c'"):
        build_features(df, rules=KEEP)


def test_ragged_panel_padding_and_mask():
    a = build_features(price_frame(PRICES, market="long"), rules=KEEP)[0]
    b = build_features(price_frame([1.0, 2.0, 1.5, 1.7], market="short"), rules=KEEP)[0]
    panel = make_panel([a, b])
    assert panel.x.shape == (2, 5, 2)
    assert panel.x.dtype == torch.float64
    assert panel.mask.dtype == torch.bool
    assert panel.lengths.dtype == torch.long
    assert panel.lengths.tolist() == [5, 3]
    assert panel.mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert torch.all(panel.x[1, 3:] == 0)
    np.testing.assert_array_equal(panel.x[0].numpy(), a.features)
    np.testing.assert_array_equal(panel.x[1, :3].numpy(), b.features)
    assert panel.markets == ("long", "short")
    assert panel.num_markets == 2
    assert panel.num_features == 2
    assert make_panel([a, b], dtype=torch.float32).x.dtype == torch.float32


def test_panel_rejects_mismatched_features_and_empty():
    a = build_features(price_frame(), features=("return",), rules=KEEP)[0]
    b = build_features(price_frame(market="n"), rules=KEEP)[0]
    with pytest.raises(DataError):
        make_panel([a, b])
    with pytest.raises(DataError):
        make_panel([])


def test_market_series_is_plain_dataclass():
    s = build_features(price_frame(), rules=KEEP)[0]
    assert isinstance(s, MarketSeries)
    assert isinstance(s.dates, pd.DatetimeIndex)
    assert s.feature_mean.shape == (2,) and s.feature_std.shape == (2,)
