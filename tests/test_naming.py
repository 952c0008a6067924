"""Names across markets (issue #20): relative names by each market's own volatility, or shared names on one
ladder of daily return sds for all markets (``model.naming: shared``)."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from regime_dmm import FitConfig, fit
from regime_dmm.cli import main
from regime_dmm.data import MarketSpec, simulate_markets
from regime_dmm.errors import ConfigError
from regime_dmm.naming import shared_ladder, shared_names
from regime_dmm.outputs import write_outputs

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("calm", "volatile", "panic")


def _monotone(daily_sd: dict, names: dict) -> bool:
    """Across every pair of regimes of any markets: a higher name never has a smaller daily sd."""
    rank = {n: i for i, n in enumerate(NAMES)}
    cells = [(rank[n], sd) for m in daily_sd for n, sd in zip(names[m], daily_sd[m])]
    return all(not (r1 < r2 and s1 > s2) for (r1, s1), (r2, s2) in itertools.permutations(cells, 2))


def test_shared_names_put_every_market_on_one_ladder():
    # a token five times as volatile as the index in every regime
    sds = {"index": [0.004, 0.010, 0.025], "token": [0.020, 0.050, 0.125]}
    relative = {m: list(NAMES) for m in sds}
    assert not _monotone(sds, relative)  # the trap: the token's "calm" moves more than the index's "volatile"
    shared = shared_names(sds, NAMES)
    assert _monotone(sds, shared)
    assert shared["index"][0] == "calm" and shared["token"][-1] == "panic"
    assert shared["index"] != relative["index"] and shared["token"] != relative["token"]
    # the ladder: per rank, the geometric mean across markets
    assert shared_ladder(sds) == pytest.approx(np.sqrt(np.array(sds["index"]) * np.array(sds["token"])))


def test_shared_names_are_the_relative_ones_for_one_market_or_alike_markets():
    one = {"a": [0.004, 0.012, 0.05]}
    assert shared_names(one, NAMES) == {"a": list(NAMES)}
    alike = {"a": [0.004, 0.012, 0.05], "b": [0.0045, 0.011, 0.055]}
    assert shared_names(alike, NAMES) == {"a": list(NAMES), "b": list(NAMES)}


def test_shared_names_refuse_what_has_no_ladder():
    with pytest.raises(ValueError, match="same number"):
        shared_names({"a": [0.01, 0.02], "b": [0.01, 0.02, 0.03]}, NAMES)
    with pytest.raises(ValueError, match="positive and finite"):
        shared_names({"a": [0.01, np.inf, 0.05]}, NAMES)
    with pytest.raises(ValueError, match="names"):
        shared_names({"a": [0.01, 0.02]}, NAMES)
    with pytest.raises(ValueError, match="increase"):  # unordered sds would give unordered cuts: wrong names
        shared_names({"a": [0.01, 0.05, 0.02]}, NAMES)
    with pytest.raises(ConfigError, match="model.naming"):
        FitConfig().replace(model={"naming": "global"}).validate()


def _index_and_token(days: int = 900):
    common = dict(start="2018-01-02", freq="B", usage=(0.5, 0.35, 0.15), leave_rates=(0.02, 0.03, 0.06))
    specs = [
        MarketSpec(name="index", means=(0.0, 0.0, 0.0), sds=(0.004, 0.010, 0.025), **common),
        MarketSpec(name="token", means=(0.0, 0.0, 0.0), sds=(0.020, 0.050, 0.125), **common),
    ]
    return simulate_markets(specs, seed=3, n_days=days, regimes=NAMES).frame


@pytest.mark.parametrize("naming", ["relative", "shared"])
def test_a_fit_names_regimes_as_configured(tmp_path, naming):
    config = FitConfig().replace(model={"classic": True, "num_regimes": 3, "naming": naming}, training={"restarts": 1})
    result = fit(_index_and_token(), config, warn=False)
    summary = result.summary()
    daily_sd = {m: list(v["daily_sd"].values()) for m, v in summary["markets"].items()}
    shared = {m: list(v["shared_name"].values()) for m, v in summary["markets"].items()}
    assert _monotone(daily_sd, shared)
    assert not _monotone(daily_sd, {m: list(NAMES) for m in daily_sd})  # the fit recovers the trap
    assert summary["naming"]["mode"] == naming
    frame = result.regimes_frame()
    for m in result.markets:
        days = frame[frame["market"] == m.name]
        current = summary["markets"][m.name]["current_regime"]
        top = int(m.current_probs.argmax())
        summed = summary["markets"][m.name]["current_probabilities_shared"]  # a name's regimes' probabilities summed
        assert sum(summed.values()) == pytest.approx(1.0, abs=1e-5)
        assert set(summed) == set(shared[m.name])
        for name, prob in summed.items():
            own = [k for k, n in enumerate(shared[m.name]) if n == name]
            assert prob == pytest.approx(float(m.current_probs[own].sum()), abs=1e-6)
        probs = days[[f"prob_{n}" for n in NAMES]].to_numpy()
        by_name = {n: probs[:, [k for k, s in enumerate(shared[m.name]) if s == n]].sum(1) for n in set(shared[m.name])}
        best = pd.DataFrame(by_name).idxmax(axis=1)  # the shared name whose regimes are likeliest together
        assert (days["shared_regime"].to_numpy() == best.to_numpy()).all()
        if naming == "shared":
            assert (days["regime"] == days["shared_regime"]).all()
            assert current == max(summed, key=summed.get)
        else:
            assert current == NAMES[top]
            assert "relative" in summary["naming"]["note"]
    write_outputs(result, tmp_path / "out", plots=False, posterior=False)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["markets"]["token"]["shared_name"] == summary["markets"]["token"]["shared_name"]


def test_cli_prints_the_names_on_one_ladder(tmp_path, capsys):
    data = tmp_path / "prices.csv"
    _index_and_token(400)[["date", "market", "price"]].to_csv(data, index=False)
    args = ["fit", "--data", str(data), "--classic", "--regimes", "3", "--restarts", "1", "--no-plots"]
    assert main(args + ["--naming", "shared", "--out", str(tmp_path / "fit")]) == 0
    printed = capsys.readouterr().out
    assert "model.naming: shared" in printed and "named on one ladder" in printed
    regimes = (tmp_path / "fit" / "regimes.csv").read_text().splitlines()[0]
    assert regimes.endswith("shared_regime")


def test_shared_naming_without_a_ladder_says_so():
    """Under ``model.naming: shared``, a regime without a finite daily sd (a Student-t with df <= 2) leaves no
    shared ladder: the relative names are shown, and summary.json and the volatility table say why."""
    import dataclasses

    from regime_dmm.plots import volatility_table_text

    model = {"classic": True, "num_regimes": 3, "naming": "shared"}
    result = fit(_index_and_token(400), FitConfig().replace(model=model, training={"restarts": 1}), warn=False)
    token = result.market("token")
    sd = list(token.emission["return_sd"])
    sd[-1] = float("inf")
    broken = dataclasses.replace(token, emission=dict(token.emission, return_sd=sd))
    result = dataclasses.replace(result, markets=[result.market("index"), broken])
    assert result.shared_names() is None
    assert result.display_names() == {"index": list(NAMES), "token": list(NAMES)}
    naming = result.summary()["naming"]
    assert naming["mode"] == "shared" and naming["applied"] == "relative" and "not finite" in naming["note"]
    assert "no shared ladder" in volatility_table_text(result).splitlines()[0]
