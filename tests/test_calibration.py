"""Calibration reports (regime_dmm.calibration, ``regime-dmm calibrate``): the one-step predictive PIT against a
hand-written forward filter, its uniformity on data the model is right for, Brier scores by hand, and the
walk-forward (out-of-sample) report on the command line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

import regime_dmm as rd
from regime_dmm.calibration import CALIBRATION_FILE, CALIBRATION_PLOT, calibrate, regime_scores
from regime_dmm.cli import main
from regime_dmm.data import MarketSpec, simulate_markets
from regime_dmm.outputs import write_outputs

from helpers import write_csv_frame

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSIC = rd.FitConfig().replace(model={"num_regimes": 2, "classic": True}, training={"restarts": 1})


def simulated(days: int, seed: int):
    spec = MarketSpec(
        name="a",
        start="2010-01-01",
        freq="B",
        usage=(0.6, 0.4),
        leave_rates=(0.03, 0.05),
        means=(0.0005, -0.001),
        sds=(0.006, 0.02),
    )
    return simulate_markets([spec], seed=seed, n_days=days, regimes=("calm", "volatile"))


@pytest.fixture(scope="module")
def classic_fit(tmp_path_factory):
    sim = simulated(3000, seed=8)
    root = tmp_path_factory.mktemp("calibration")
    write_csv_frame(sim.frame, root / "prices.csv")
    fit = rd.fit(root / "prices.csv", CLASSIC, warn=False)
    out = root / "fit"
    write_outputs(fit, out, plots=False, posterior=False)
    return fit, out, sim


def test_pit_equals_a_hand_written_forward_filter(classic_fit):
    """Classic mode (input units, Gaussian): u_t = sum_k p(z_t = k | x_<t) Phi((x_t - mu_k) / sd_k)."""
    fit, out, sim = classic_fit
    m = fit.markets[0]
    x = m.returns[1:] if len(m.returns) == len(m.dates) + 1 else m.returns
    assert len(x) == len(m.dates) and bool(np.all(m.observed))
    mu, sd = np.asarray(m.emission["return_mean"]), np.asarray(m.emission["return_sd"])
    weights, alpha, pit = np.asarray(m.initial, float), None, []
    for t, value in enumerate(x):
        if t > 0:
            weights = alpha @ m.transition
        pit.append(float(weights @ norm.cdf((value - mu) / sd)))
        alpha = weights * norm.pdf(value, mu, sd)
        alpha /= alpha.sum()
    report = calibrate(out)
    assert report.kind == "fit" and "in sample" in report.notes[0]
    np.testing.assert_allclose(report.days["pit"].to_numpy(), pit, atol=1e-6)


def test_pit_is_uniform_and_intervals_cover_on_data_the_model_is_right_for(classic_fit):
    fit, out, sim = classic_fit
    report = calibrate(out, truth=sim.truth_frame())
    row = report.table.iloc[0]
    assert row["days"] == 2999
    assert row["ks_distance"] < 0.035  # 95 % critical value of a uniform sample of 2,999: 0.025
    assert 0.87 <= row["coverage90"] <= 0.93 and 0.46 <= row["coverage50"] <= 0.54
    assert 0.85 <= row["variance_ratio"] <= 1.15
    # filtered probabilities of a well-separated two-regime market: far better than a constant 1/2 (Brier 0.5)
    assert row["brier_h0"] < 0.2 and row["brier_h0"] < row["brier_h20"] <= 0.55
    reliability = report.reliability
    assert reliability is not None and set(reliability["horizon"]) == {0, 1, 5, 20}
    filtered = reliability[reliability["horizon"] == 0]
    busy = filtered[filtered["count"] >= 100]
    assert (abs(busy["forecast"] - busy["observed"]) < 0.12).all(), busy


def test_brier_scores_by_hand():
    probs = pd.DataFrame(
        {
            "date": pd.bdate_range("2020-01-01", periods=4).strftime("%Y-%m-%d"),
            "market": "a",
            "filtered_calm": [1.0, 0.5, 0.0, 0.8],
            "filtered_volatile": [0.0, 0.5, 1.0, 0.2],
        }
    )
    truth = pd.DataFrame(
        {"date": pd.bdate_range("2020-01-01", periods=4), "market": "a", "regime": ["calm", "calm", "volatile", "calm"]}
    )
    stay = np.eye(2)  # a transition matrix that never moves: the h-day forecast is the filtered one
    scores, bins = regime_scores(probs, {"a": stay}, truth, ("calm", "volatile"), horizons=(1,))
    expected_h0 = np.mean([0.0, 0.5, 0.0, 0.08])  # sum_k (p_k - y_k)^2 per day
    expected_h1 = np.mean([0.0, 0.5, 2.0])  # day i's forecast against day i + 1's regime
    assert scores.loc[0, "brier_h0"] == pytest.approx(expected_h0)
    assert scores.loc[0, "brier_h1"] == pytest.approx(expected_h1)
    assert bins.loc[bins["horizon"] == 0, "count"].sum() == 8  # two regimes x four days


def test_walk_forward_report_on_the_command_line(tmp_path, capsys):
    sim = simulated(330, seed=21)
    write_csv_frame(sim.frame, tmp_path / "prices.csv")
    sim.truth_frame().assign(date=lambda f: f["date"].dt.strftime("%Y-%m-%d")).to_csv(
        tmp_path / "truth.csv", index=False
    )
    out = tmp_path / "wf"
    args = ["--classic", "--regimes", "2", "--restarts", "1", "--refit-every", "40", "--start", "2010-09-01"]
    assert main(["walkforward", "--data", str(tmp_path / "prices.csv"), "--out", str(out), "--quiet", *args]) == 0
    printed = capsys.readouterr().out
    assert "Calibration (walk-forward; out of sample" in printed and (out / CALIBRATION_FILE).is_file()
    assert main(["calibrate", str(out), "--truth", str(tmp_path / "truth.csv")]) == 0
    table = pd.read_csv(out / CALIBRATION_FILE)
    walk = pd.read_csv(out / "walkforward.csv")
    assert table.loc[0, "days"] == int(walk["observed"].sum())  # every walk-forward day with a return, once
    assert {"ks_distance", "coverage50", "coverage90", "variance_ratio", "brier_h0", "brier_h20"} <= set(table)
    assert (out / CALIBRATION_PLOT).stat().st_size > 0
    bad = tmp_path / "bad_truth.csv"
    bad.write_text("date,market,regime\n2010-09-02,a,bubble\n")
    capsys.readouterr()
    assert main(["calibrate", str(out), "--truth", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bubble" in err and "row 2 (market 'a', date 2010-09-02)" in err and "Traceback" not in err
    bad.write_text("date,market,regime\n2010-09-02,a,calm\nnot a day,a,calm\n")
    assert main(["calibrate", str(out), "--truth", str(bad)]) == 2
    assert "row 3 (market 'a')" in capsys.readouterr().err
    assert main(["calibrate", str(out), "--truth", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path)]) == 2
