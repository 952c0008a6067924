"""Walk-forward regimes (regime_dmm.walkforward, ``regime-dmm walkforward``): refits on the data available
then, each later day filtered with the days up to it only; no look-ahead, resumable, same bytes."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import regime_dmm as rd
from regime_dmm.checkpoints import read_checkpoint
from regime_dmm.cli import main
from regime_dmm.data import simulate_default
from regime_dmm.errors import CheckpointError, ConfigError
from regime_dmm.nowcast import nowcast
from regime_dmm.walkforward import (
    PART_FORMAT,
    PART_KEYS,
    PARTS,
    REFITS_FILE,
    WALKFORWARD_FILE,
    WalkForwardPlan,
    describe_plan,
    refit_dates,
    relabelled_days,
    walk_forward,
)

import helpers
from helpers import write_csv_frame

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSIC = rd.FitConfig().replace(model={"num_regimes": 2, "classic": True}, training={"restarts": 1})
DMM = rd.FitConfig().replace(model={"num_regimes": 3}, training={"epochs": 12, "restarts": 1})
PLAN = WalkForwardPlan(refit_every=40, start="2020-09-01", refit_epochs=6)


def two_regime_market(days: int) -> pd.DataFrame:
    return helpers.two_regime_market(days, seed=21)


@pytest.fixture(scope="module")
def classic_run(tmp_path_factory):
    frame = two_regime_market(330)
    out = tmp_path_factory.mktemp("wf") / "classic"
    return frame, out, walk_forward(frame, CLASSIC, plan=PLAN, out=out)


def test_every_row_uses_a_fit_made_before_its_day(classic_run):
    frame, out, table = classic_run
    names = [f"filtered_{r}" for r in CLASSIC.model.names()]
    assert list(table.columns) == ["date", "market", "regime", *names, "fit_date", "observed"]
    assert (table["fit_date"] < table["date"]).all()
    assert table["fit_date"].iloc[0] == "2020-09-01" and table["date"].iloc[0] == "2020-09-02"
    assert table["fit_date"].nunique() == 4  # 2020-09-01 + every 40 dates until the data end
    assert table["date"].is_monotonic_increasing and not table["date"].duplicated().any()
    later = frame.loc[frame["date"] > pd.Timestamp("2020-09-01"), "date"].dt.strftime("%Y-%m-%d")
    assert table["date"].tolist() == later.tolist()  # every later day, once
    np.testing.assert_allclose(table[names].sum(axis=1), 1.0, atol=1e-5)
    assert (out / WALKFORWARD_FILE).read_text().startswith("date,market,regime,filtered_calm")


def test_each_refit_reports_the_days_it_relabels(classic_run):
    """Issue #19: every refit after the first says how many of the days both it and the previous refit saw it
    names differently (walkforward_refits.csv, table.attrs["refits"])."""
    frame, out, table = classic_run
    refits = pd.read_csv(out / REFITS_FILE)
    columns = ["refit", "fit_date", "market", "overlap_days", "relabelled_days", "relabelled_share"]
    assert list(refits.columns) == columns
    assert refits["refit"].tolist() == [1, 2, 3] and (refits["market"] == "a").all()
    assert refits["fit_date"].tolist() == sorted(table["fit_date"].unique())[1:]
    # expanding window: the days both saw are the earlier refit's, every one of them observed here
    dates = frame["date"]
    for row, earlier in zip(refits.itertuples(), sorted(table["fit_date"].unique())):
        assert row.overlap_days == int((dates <= pd.Timestamp(earlier)).sum()) - 1  # returns: one fewer than prices
    assert ((refits["relabelled_share"] >= 0) & (refits["relabelled_share"] <= 1)).all()
    pd.testing.assert_frame_equal(table.attrs["refits"].reset_index(drop=True), refits, check_dtype=False, atol=1e-6)


def test_relabelled_days_count_the_days_whose_regime_changed(classic_run):
    """A later refit that can never enter the volatile regime relabels exactly the days the earlier refit called
    volatile - counted here from an ordinary fit on the same days (the first refit is that fit); the same refit
    twice relabels none."""
    frame, out, _ = classic_run
    saved = read_checkpoint(out / PARTS / "0000.pt", PART_FORMAT, "walk-forward refit", PART_KEYS)
    fit_date = pd.Timestamp(saved["fit_date"])
    earlier = dict(saved, fit_date=fit_date, low=None)
    assert [r["relabelled_days"] for r in relabelled_days(earlier, earlier, frame, CLASSIC, 1)] == [0]
    never = {k: v.clone() for k, v in saved["params"].items()}
    never["classic.initial"] = torch.tensor([[0.0, -1e3]], dtype=torch.float64)
    never["classic.transition"] = torch.tensor([[[0.0, -1e3], [0.0, -1e3]]], dtype=torch.float64)
    later = dict(earlier, params=never)
    [row] = relabelled_days(earlier, later, frame, CLASSIC, 1)
    first = rd.fit(frame[frame["date"] <= fit_date], CLASSIC).regimes_frame()
    volatile = int(((first["regime"] == "volatile") & (first["observed"] == 1)).sum())
    assert volatile > 0
    assert row["relabelled_days"] == volatile and row["overlap_days"] == int(first["observed"].sum())


def test_first_block_equals_the_nowcast_of_a_fit_on_the_days_before(classic_run):  # to the CSV's 6 decimals
    """Another code path (a fit on the first days, then the filter updated with each new day) gives the
    same probabilities for the days the first refit covers."""
    frame, _, table = classic_run
    cut = pd.Timestamp("2020-09-01")
    first = rd.fit(frame[frame["date"] <= cut], CLASSIC)
    block = table[table["fit_date"] == "2020-09-01"]
    new = frame[(frame["date"] > cut) & (frame["date"] <= pd.Timestamp(block["date"].iloc[-1]))]
    expected = nowcast(first, new)
    names = CLASSIC.model.names()
    np.testing.assert_allclose(
        block[[f"filtered_{r}" for r in names]].to_numpy(),
        expected[[f"prob_{r}" for r in names]].to_numpy(),
        atol=5.1e-7,
    )


def test_appending_later_days_leaves_every_earlier_row_unchanged(tmp_path):
    """The default model (transition network fed past days, a no-trade 7-day token): bit for bit."""
    full = simulate_default(seed=6, n_days=330, jump_prob=0).frame
    short = full[full["date"] <= pd.Timestamp("2020-03-20")]
    plan = WalkForwardPlan(refit_every=45, start="2015-09-01", refit_epochs=4)
    walk_forward(short, DMM, plan=plan, out=tmp_path / "short")
    walk_forward(full, DMM, plan=plan, out=tmp_path / "full")
    before = (tmp_path / "short" / WALKFORWARD_FILE).read_text().splitlines()
    after = (tmp_path / "full" / WALKFORWARD_FILE).read_text().splitlines()
    assert len(after) > len(before) > 60
    assert after[: len(before)] == before
    assert {line.split(",")[1] for line in before[1:]} == {"traditional_cre", "tokenized_reit"}


def test_a_rerun_resumes_after_the_finished_refits_and_gives_the_same_bytes(classic_run, tmp_path):
    frame, out, _ = classic_run
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    (copy / WALKFORWARD_FILE).unlink()
    for suffix in (".csv", ".pt"):
        (copy / "walkforward_parts" / f"0003{suffix}").unlink()
        (copy / "walkforward_parts" / f"0002{suffix}").unlink()
    lines: list[str] = []
    walk_forward(frame, CLASSIC, plan=PLAN, out=copy, log=lines.append)
    refits = [line.split(" on ")[0] for line in lines if line.startswith("refit ")]
    assert refits == ["refit 3/4", "refit 4/4"]  # 1 and 2 were kept
    assert lines[0].startswith("walk-forward: 4 refits every 40 dates from 2020-09-01")
    last_refit = [line for line in lines if line.startswith("refit ")][-1]
    assert "about" in last_refit and "left" in last_refit  # the time left, after each refit
    assert lines[-1].startswith("names relabelled against the previous refit")
    assert (copy / WALKFORWARD_FILE).read_bytes() == (out / WALKFORWARD_FILE).read_bytes()
    assert (copy / REFITS_FILE).read_bytes() == (out / REFITS_FILE).read_bytes()  # kept refits compared as run


def test_days_appended_continue_the_folder_to_the_rows_of_one_run(tmp_path, capsys):
    """A daily run: days 1..N, then 1..N+20 into the same folder, gives exactly the table of one run on 1..N+20,
    with only the refits the new days call for; a revised close in the prefix exits 2 and changes nothing."""
    full = two_regime_market(330)
    dates = pd.DatetimeIndex(sorted(full["date"].unique()))
    short = full[full["date"] <= dates[-21]]
    assert len(dates) - len(pd.unique(short["date"])) == 20
    once = walk_forward(full, CLASSIC, plan=PLAN, out=tmp_path / "once")
    walk_forward(short, CLASSIC, plan=PLAN, out=tmp_path / "daily")
    lines: list[str] = []
    again = walk_forward(full, CLASSIC, plan=PLAN, out=tmp_path / "daily", log=lines.append)
    assert (tmp_path / "daily" / WALKFORWARD_FILE).read_bytes() == (tmp_path / "once" / WALKFORWARD_FILE).read_bytes()
    pd.testing.assert_frame_equal(again, once)
    # the short run's last refit (2020-12-15, block cut at its last day) continues without a refit; no refit is new
    # here, since 20 days do not reach the next refit date: one line, rows added
    lines = [line for line in lines if line.startswith("refit ")]
    assert len(lines) == 1 and "rows added (no refit)" in lines[0]

    write_csv_frame(full, tmp_path / "full.csv")
    revised = full.copy()
    at = revised.index[revised["date"] == dates[100]][0]
    revised.loc[at, "price"] *= 1.02
    write_csv_frame(revised, tmp_path / "revised.csv")
    folder = tmp_path / "daily"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    capsys.readouterr()
    code = main(
        [
            "walkforward",
            "--data",
            str(tmp_path / "revised.csv"),
            "--out",
            str(folder),
            "--classic",
            "--regimes",
            "2",
            "--restarts",
            "1",
            "--refit-every",
            "40",
            "--start",
            "2020-09-01",
            "--refit-epochs",
            "6",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"date {dates[100].date()}" in err and "price was" in err and "'a'" in err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_new_refits_run_only_for_the_days_appended(tmp_path):
    full = two_regime_market(330)
    dates = pd.DatetimeIndex(sorted(full["date"].unique()))
    short = full[full["date"] <= dates[-60]]
    walk_forward(short, CLASSIC, plan=PLAN, out=tmp_path / "daily")
    lines: list[str] = []
    walk_forward(full, CLASSIC, plan=PLAN, out=tmp_path / "daily", log=lines.append)
    once = walk_forward(full, CLASSIC, plan=PLAN, out=tmp_path / "once")
    assert (tmp_path / "daily" / WALKFORWARD_FILE).read_bytes() == (tmp_path / "once" / WALKFORWARD_FILE).read_bytes()
    assert len(once) > 0
    lines = [line for line in lines if line.startswith("refit ")]
    continued = [line for line in lines if "no refit" in line]
    refitted = [line for line in lines if "no refit" not in line]
    assert len(continued) == 1 and len(refitted) >= 1  # the cut block continued, then the new refits
    assert all(line.startswith("refit ") for line in lines)


def test_a_long_expanding_window_is_reported_before_any_work():
    """0.4.0 ran 260 refits from an expanding window of 19,000 dates without a word for 24 minutes."""
    dates = pd.bdate_range("1950-01-02", periods=7000)
    plan = WalkForwardPlan(refit_every=21, start=str(dates[6000].date()))
    lines = describe_plan(dates, refit_dates(dates, plan), plan)
    assert lines[0].startswith(f"walk-forward: 48 refits every 21 dates from {dates[6000].date()}")
    assert "the first fit sees 6,001 dates, the last 6,988" in lines[0]
    assert lines[1].startswith("WARNING walk-forward: the first fit sees 6,001 dates (from 1950-01-02)")
    assert "--window 2520" in lines[1]
    rolling = WalkForwardPlan(refit_every=21, start=str(dates[6000].date()), window=2520)
    (line,) = describe_plan(dates, refit_dates(dates, rolling), rolling)
    assert "each on the last 2520 dates: the first fit sees 2,520 dates" in line


def test_other_settings_in_the_same_folder_are_refused(classic_run):
    frame, out, _ = classic_run
    with pytest.raises(CheckpointError, match="other settings"):
        walk_forward(frame, CLASSIC, plan=WalkForwardPlan(refit_every=20, start="2020-09-01"), out=out)


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        (WalkForwardPlan(refit_every=0), "refit_every"),
        (WalkForwardPlan(window=10), "window"),
        (WalkForwardPlan(start="2031-01-01"), "no day to predict"),
        (WalkForwardPlan(start="not a date"), "cannot read"),
        (WalkForwardPlan(), "default start"),  # 61 dates: the 500th is not there (never len // 2)
    ],
)
def test_bad_settings_are_named(plan, match):
    with pytest.raises(ConfigError, match=match):
        walk_forward(two_regime_market(60), CLASSIC, plan=plan)


def test_rolling_window_refits_see_only_the_last_dates(tmp_path):
    frame = two_regime_market(260)
    plan = WalkForwardPlan(refit_every=60, window=120, start="2020-07-01", refit_epochs=5)
    table = walk_forward(frame, CLASSIC, plan=plan)
    assert table["fit_date"].nunique() == 3 and (table["fit_date"] < table["date"]).all()
    # a rolling window forgets the start: the same data without its first 10 rows give the same rows
    later = walk_forward(frame.iloc[10:], CLASSIC, plan=plan)
    pd.testing.assert_frame_equal(table, later)


def test_command_line_writes_walkforward_csv_and_refuses_a_bad_window(tmp_path, capsys):
    csv = tmp_path / "a.csv"
    write_csv_frame(two_regime_market(200), csv)
    out = tmp_path / "wf"
    args = ["walkforward", "--data", str(csv), "--classic", "--regimes", "2", "--restarts", "1"]
    assert main([*args, "--refit-every", "50", "--start", "2020-06-01", "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / WALKFORWARD_FILE)
    assert list(table.columns[:3]) == ["date", "market", "regime"] and len(table) > 50
    assert f"wrote {out}/{WALKFORWARD_FILE}" in capsys.readouterr().out
    assert main([*args, "--window", "weekly", "--out", str(tmp_path / "other")]) == 2
    assert "--window must be 'expanding' or a number" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_resumed_run_keeps_market_names_that_look_like_numbers(tmp_path):
    frame = two_regime_market(200).assign(market="000001")
    plan = WalkForwardPlan(refit_every=50, start="2020-06-01", refit_epochs=5)
    whole = walk_forward(frame, CLASSIC, plan=plan, out=tmp_path / "a")
    assert set(whole["market"]) == {"000001"}
    (tmp_path / "a" / WALKFORWARD_FILE).unlink()
    (tmp_path / "a" / "walkforward_parts" / "0001.csv").unlink()
    again = walk_forward(frame, CLASSIC, plan=plan, out=tmp_path / "a")
    pd.testing.assert_frame_equal(again, whole)
    assert set(pd.read_csv(tmp_path / "a" / WALKFORWARD_FILE, dtype=str)["market"]) == {"000001"}


def test_a_market_too_short_or_flat_for_a_fit_waits_for_a_later_refit():
    a = two_regime_market(260)
    late = a.assign(market="late")
    late = late[late["date"] >= pd.Timestamp("2020-07-15")].copy()
    late.loc[late["date"] < pd.Timestamp("2020-09-01"), "price"] = 100.0  # listed flat first
    frame = pd.concat([a, late], ignore_index=True)
    plan = WalkForwardPlan(refit_every=30, start="2020-06-01", refit_epochs=5)
    table = walk_forward(frame, CLASSIC, plan=plan)
    first_late = table.loc[table["market"] == "late", "fit_date"].min()
    assert first_late > "2020-09-01"  # not before it has 30 traded returns
    assert (table.loc[table["market"] == "a", "date"] > "2020-06-01").all() and len(table[table["market"] == "a"]) > 100
    # the refits' relabelled days: market a from the second refit on, the late market once two refits fitted it
    refits = table.attrs["refits"]
    first_a = refits.loc[refits["market"] == "a", "refit"].min()
    assert first_a == 1 and (refits.loc[refits["market"] == "a", "overlap_days"] > 0).all()
    late_rows = refits[refits["market"] == "late"]
    assert len(late_rows) >= 1 and (late_rows["fit_date"] > first_late).all()


def test_a_stop_between_a_continued_part_s_two_files_duplicates_no_row(tmp_path):
    """The continued part's CSV was written, its parameters file not (a stop in between): the rerun trims the CSV to
    the days the parameters file vouches for, and the table is one run's."""
    full = two_regime_market(330)
    dates = pd.DatetimeIndex(sorted(full["date"].unique()))
    folder = tmp_path / "daily"
    walk_forward(full[full["date"] <= dates[-6]], CLASSIC, plan=PLAN, out=folder)
    parts = sorted((folder / "walkforward_parts").glob("*.pt"))
    saved = parts[-1].read_bytes()
    walk_forward(full, CLASSIC, plan=PLAN, out=folder)
    parts[-1].write_bytes(saved)  # as if stopped before the .pt was replaced
    again = walk_forward(full, CLASSIC, plan=PLAN, out=folder)
    once = walk_forward(full, CLASSIC, plan=PLAN, out=tmp_path / "once")
    assert not again.duplicated(["date", "market"]).any()
    pd.testing.assert_frame_equal(again, once)
