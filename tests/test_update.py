"""`regime-dmm update` / `rd.update`: filter the new days of a saved fit, append them, report the regime now."""

import json

import numpy as np
import pandas as pd
import pytest

import regime_dmm as rd
from regime_dmm.atomic import LOCK_FILE
from regime_dmm.cli import main
from regime_dmm.inference import last_filtered
from regime_dmm.outputs import write_outputs
from regime_dmm.update import CHANGED_EXIT_CODE, UPDATES_FILE

from helpers import head as _head
from helpers import write_csv_frame

FIT_DAYS = 250

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small exact DMM fitted on the first FIT_DAYS rows of each of two markets, saved; the full frame (40 more
    days) and the folder."""
    root = tmp_path_factory.mktemp("update")
    full = rd.simulate_default(seed=7, n_days=FIT_DAYS + 40, no_trade_share=0, jump_prob=0).frame
    full.attrs.clear()
    config = rd.FitConfig().replace(model={"num_regimes": 3}, training={"epochs": 40, "restarts": 1})
    result = rd.fit(_head(full, FIT_DAYS), config)
    write_outputs(result, root / "fit", plots=False, posterior=False)
    return result, full, root


def _rows_until(full: pd.DataFrame, extra: int) -> pd.DataFrame:
    """Each market's first FIT_DAYS + ``extra`` rows."""
    return _head(full, FIT_DAYS + extra)


def test_update_equals_a_walk_forward_filter_of_the_new_days(saved, tmp_path):
    result, full, root = saved
    folder = tmp_path / "fit"
    folder.mkdir()
    for item in (root / "fit").iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    data = _rows_until(full, 5)
    out = rd.update(folder, data)
    written = pd.read_csv(folder / UPDATES_FILE)
    assert len(written) == 10 and set(written["market"]) == {"traditional_cre", "tokenized_reit"}
    # the walk-forward filter (regime_dmm.walkforward): each new day from the rows up to it alone, same parameters
    fitted = result.require_fitted()
    names = result.regimes
    for _, row in written.iterrows():
        rows = data[data["date"] <= pd.Timestamp(row["date"])]
        panel = fitted.pipeline.transform(rows)
        pot = fitted.potentials(fitted.model_data(panel))
        m = panel.markets.index(row["market"])
        steps = panel.series[m].length
        one = (pot.log_init[m : m + 1], pot.log_trans[m : m + 1, :steps], pot.obs_ll[m : m + 1, :steps])
        expected = last_filtered(*one)
        probs = expected[0].exp().numpy()
        np.testing.assert_allclose(row[[f"prob_{n}" for n in names]].to_numpy(float), probs, atol=1e-6)
        assert row["regime"] == names[int(probs.argmax())]
    # the report: the regime now is the last written day's, and its run on the filtered path is counted
    for market in out.markets:
        last = written[written["market"] == market.market].iloc[-1]
        assert (market.date, market.regime, market.new_days) == (last["date"], last["regime"], 5)
        assert market.probability == pytest.approx(last[f"prob_{market.regime}"], abs=1e-6)
        assert market.days_in_regime >= 1 and market.regime_since <= market.date
        assert market.changed == (market.regime != market.known_regime)


def test_updates_append_and_a_revised_close_changes_nothing(saved, tmp_path, capsys):
    _, full, root = saved
    folder = tmp_path / "fit"
    folder.mkdir()
    for item in (root / "fit").iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    write_csv_frame(_rows_until(full, 5), tmp_path / "five.csv")
    write_csv_frame(_rows_until(full, 12), tmp_path / "twelve.csv")
    code = main(["update", str(folder), "--data", str(tmp_path / "five.csv"), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["market"] for line in lines] == ["traditional_cre", "tokenized_reit"]
    assert code == (CHANGED_EXIT_CODE if any(line["changed"] for line in lines) else 0)
    assert {"regime", "probability", "days_in_regime", "previous_regime", "changed", "new_days"} <= set(lines[0])
    first = (folder / UPDATES_FILE).read_text()

    # seven more days: the earlier rows stay byte for byte, the "known" day is the previous update's last day
    code = main(["update", str(folder), "--data", str(tmp_path / "twelve.csv"), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    second = (folder / UPDATES_FILE).read_text()
    old_rows = set(first.splitlines()[1:])
    assert old_rows <= set(second.splitlines()[1:]) and len(second.splitlines()) == 1 + 24
    assert all(line["new_days"] == 7 for line in lines)
    assert code == (CHANGED_EXIT_CODE if any(line["changed"] for line in lines) else 0)

    # the same file again: nothing new, nothing changed, exit 0
    assert main(["update", str(folder), "--data", str(tmp_path / "twelve.csv"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(line["new_days"] == 0 and not line["changed"] for line in lines)

    # a revised close on a day an update wrote: exit 2, the market and date named, nothing written
    revised = _rows_until(full, 12).copy()
    at = revised.index[revised["market"] == "tokenized_reit"][FIT_DAYS + 2]
    revised.loc[at, "price"] *= 1.05
    write_csv_frame(revised, tmp_path / "revised.csv")
    assert main(["update", str(folder), "--data", str(tmp_path / "revised.csv")]) == 2
    err = capsys.readouterr().err
    day = revised.loc[at, "date"].strftime("%Y-%m-%d")
    assert "tokenized_reit" in err and day in err and "nothing written" in err
    assert (folder / UPDATES_FILE).read_text() == second
    assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]  # no temporary file


def test_update_exits_3_when_a_regime_changed(saved, tmp_path, capsys):
    """The exit code follows the regime: 0 while every market's filtered regime is its fitted last day's (read from
    regimes.csv's filtered columns), 3 from the first new day on which one differs."""
    result, full, root = saved
    names = result.regimes
    fitted_rows = pd.read_csv(root / "fit" / "regimes.csv")
    columns = [f"filtered_{n}" for n in names]
    known = {m: names[int(np.argmax(g[columns].to_numpy()[-1]))] for m, g in fitted_rows.groupby("market", sort=False)}
    days = rd.update(root / "fit", _rows_until(full, 40), write=False).frame  # each day from the rows up to it
    differs = days[days["regime"] != days["market"].map(known)]
    assert len(differs), "no regime change in 40 simulated days: pick another seed"
    first = pd.Timestamp(differs["date"].min())
    extra = int((days.loc[days["market"] == differs["market"].iloc[0], "date"].map(pd.Timestamp) <= first).sum())
    for n, code in ((extra - 1, 0), (extra, CHANGED_EXIT_CODE)):
        if n < 1:
            continue
        folder = tmp_path / f"fit{n}"
        folder.mkdir()
        for item in (root / "fit").iterdir():
            (folder / item.name).write_bytes(item.read_bytes())
        write_csv_frame(_rows_until(full, n), tmp_path / f"new{n}.csv")
        assert main(["update", str(folder), "--data", str(tmp_path / f"new{n}.csv")]) == code, n
        assert ("CHANGED from" in capsys.readouterr().out) == (code == CHANGED_EXIT_CODE)


def test_update_refuses_what_it_cannot_filter(saved, tmp_path):
    _, full, root = saved
    with pytest.raises(rd.DataError, match="no day after the last fitted dates"):
        rd.update(root / "fit", _rows_until(full, 0), write=False)
    # a gap of more than data.max_gap (5) business days after a market's last fitted day
    data = _rows_until(full, 30)
    market = data[data["market"] == "traditional_cre"]
    late = market.iloc[FIT_DAYS + 10 :]
    gapped = pd.concat([data[data["market"] != "traditional_cre"], market.iloc[:FIT_DAYS], late])
    with pytest.raises(rd.DataError, match="traditional_cre.*missing between"):
        rd.update(root / "fit", gapped, write=False)
    with pytest.raises(rd.CheckpointError, match="no saved fit"):
        rd.update(tmp_path, data, write=False)
    assert not (root / "fit" / UPDATES_FILE).exists()


def test_update_of_a_walk_forward_folder_filters_with_its_last_refit(tmp_path, capsys):
    """The new days after a walk-forward run get the probabilities a walk-forward on all the days gives them (same
    last refit, no new one), written to updates.csv; the run's own files are left as they were."""
    from regime_dmm.walkforward import WALKFORWARD_FILE, WalkForwardPlan, walk_forward

    from helpers import two_regime_market

    full = two_regime_market(330, seed=21)
    dates = sorted(full["date"].unique())
    short = full[full["date"] <= dates[-6]]
    config = rd.FitConfig().replace(model={"num_regimes": 2, "classic": True}, training={"restarts": 1})
    plan = WalkForwardPlan(refit_every=40, start="2020-09-01")  # the last refit's block covers the last 25 dates
    write_csv_frame(short, tmp_path / "short.csv")
    write_csv_frame(full, tmp_path / "full.csv")
    walk_forward(tmp_path / "short.csv", config, plan=plan, out=tmp_path / "wf")
    once = walk_forward(tmp_path / "full.csv", config, plan=plan, out=tmp_path / "once")
    before = (tmp_path / "wf" / WALKFORWARD_FILE).read_bytes()
    code = main(["update", str(tmp_path / "wf"), "--data", str(tmp_path / "full.csv"), "--json"])
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert code == (CHANGED_EXIT_CODE if line["changed"] else 0) and line["new_days"] == 5
    written = pd.read_csv(tmp_path / "wf" / UPDATES_FILE)
    expected = once[once["date"] > pd.Timestamp(dates[-6]).strftime("%Y-%m-%d")]
    assert list(written["date"]) == list(expected["date"])
    ours = written[["prob_calm", "prob_volatile"]].to_numpy()
    np.testing.assert_allclose(ours, expected[["filtered_calm", "filtered_volatile"]].to_numpy(), atol=2e-6)
    assert (tmp_path / "wf" / WALKFORWARD_FILE).read_bytes() == before
    wf = pd.read_csv(tmp_path / "wf" / WALKFORWARD_FILE)
    assert line["known_date"] == wf["date"].iloc[-1]


def test_a_bad_tick_on_the_last_day_changes_no_day_already_written(saved, tmp_path):
    """Day N + 3 is typed x10; day N + 4 reverses it, so it is a bad tick only once day N + 4 is known. The first
    update filtered day N + 3 as it stood (as a walk-forward would); the second keeps that row and goes on."""
    _, full, root = saved
    folder = tmp_path / "fit"
    folder.mkdir()
    for item in (root / "fit").iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    data = _rows_until(full, 5).copy()
    tick = data.index[data["market"] == "traditional_cre"][FIT_DAYS + 2]
    data.loc[tick, "price"] *= 10.0
    rd.update(folder, data[data.groupby("market").cumcount() < FIT_DAYS + 3])
    first = (folder / UPDATES_FILE).read_text()
    result = rd.update(folder, data)
    second = (folder / UPDATES_FILE).read_text()
    assert set(first.splitlines()) <= set(second.splitlines())  # day N + 3's row as first written
    assert all(m.new_days == 2 for m in result.markets)
    # all five days at once: day N + 3 filtered as it stood on its own day (observed), not as the next day
    # revealed it (masked): the rows of the two routes are the same
    at_once = tmp_path / "at_once"
    at_once.mkdir()
    for item in (root / "fit").iterdir():
        (at_once / item.name).write_bytes(item.read_bytes())
    rd.update(at_once, data)
    assert (at_once / UPDATES_FILE).read_text() == second


def test_update_walkforward_update_in_turn_on_one_folder(tmp_path):
    """A daily routine on a walk-forward folder: update, then the walk-forward continued on the grown file (its
    rows now hold the updated days), then update again."""
    from regime_dmm.walkforward import WalkForwardPlan, walk_forward

    from helpers import two_regime_market

    full = two_regime_market(330, seed=21)
    dates = sorted(full["date"].unique())
    config = rd.FitConfig().replace(model={"num_regimes": 2, "classic": True}, training={"restarts": 1})
    plan = WalkForwardPlan(refit_every=40, start="2020-09-01")
    folder = tmp_path / "wf"
    walk_forward(full[full["date"] <= dates[-11]], config, plan=plan, out=folder)
    rd.update(folder, full[full["date"] <= dates[-6]])
    walk_forward(full[full["date"] <= dates[-6]], config, plan=plan, out=folder)
    result = rd.update(folder, full)
    written = pd.read_csv(folder / UPDATES_FILE)
    assert sorted(written["date"].unique()) == [pd.Timestamp(d).strftime("%Y-%m-%d") for d in dates[-5:]]
    assert all(m.new_days == 5 for m in result.markets)
