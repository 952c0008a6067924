"""Tests of regime_dmm.data.loader.load_prices: valid inputs and every kind of bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regime_dmm.data import load_prices
from regime_dmm.errors import DataError

N_GOOD = 31  # 31 prices -> 30 returns, exactly the default minimum


def good_rows(market: str = "A", n: int = N_GOOD, start: str = "2020-01-01") -> list[str]:
    """``n`` valid ``date,market,price`` rows of a non-constant price series."""
    dates = pd.date_range(start, periods=n, freq="D")
    return [f"{d:%Y-%m-%d},{market},{100 + (i % 5) - 0.5 * (i % 2):.2f}" for i, d in enumerate(dates)]


def write(tmp_path: Path, rows: list[str], header: str = "date,market,price", name: str = "p.csv") -> Path:
    path = tmp_path / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def with_bad_row(bad: str, at: int = 5, market: str = "A") -> list[str]:
    """Good rows with ``bad`` inserted as data row ``at + 1``."""
    rows = good_rows(market)
    return rows[:at] + [bad] + rows[at:]


def raises(source, match_all: list[str], **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_prices(source, **kwargs)
    message = str(info.value)
    for fragment in match_all:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------- valid input


def test_valid_price_file(tmp_path):
    rows = good_rows("A") + good_rows("B", start="2021-03-01")
    df = load_prices(write(tmp_path, rows))
    assert list(df.columns) == ["date", "market", "price"]
    assert df.attrs["value_column"] == "price"
    assert df["date"].dtype == np.dtype("datetime64[ns]")
    assert df["price"].dtype == np.float64
    assert list(pd.unique(df["market"])) == ["A", "B"]
    assert len(df) == 2 * N_GOOD
    assert df.index.equals(pd.RangeIndex(len(df)))


def test_unsorted_dates_are_sorted_and_market_order_kept(tmp_path):
    rows_b = good_rows("B")
    rows_a = good_rows("A")
    shuffled = [rows_b[3], rows_a[7]] + rows_b[:3] + rows_b[4:][::-1] + rows_a[:7] + rows_a[8:][::-1]
    df = load_prices(write(tmp_path, shuffled))
    assert list(pd.unique(df["market"])) == ["B", "A"]  # first appearance
    for _, group in df.groupby("market"):
        assert group["date"].is_monotonic_increasing
    expected = load_prices(write(tmp_path, rows_b + rows_a, name="sorted.csv"))
    pd.testing.assert_frame_equal(df, expected)


def test_return_input_and_header_normalisation(tmp_path):
    rows = [f"2020-01-{i + 1:02d}, X ,{0.01 * (-1) ** i * (1 + i % 3)}" for i in range(30)]
    df = load_prices(write(tmp_path, rows, header=" Date , MARKET ,Return ,comment"))
    assert df.attrs["value_column"] == "return"
    assert list(df.columns) == ["date", "market", "return"]
    assert df["market"].unique().tolist() == ["X"]
    assert df["return"].iloc[1] == pytest.approx(-0.02)
    # 30 returns is enough for return input, 30 prices is not for price input
    load_prices(write(tmp_path, rows, header="date,market,return", name="r.csv"), min_observations=30)
    raises(write(tmp_path, good_rows(n=30), name="p30.csv"), ["'A'", "29", "30"])


def test_dataframe_input_and_dates_normalised():
    dates = pd.date_range("2020-01-01 15:30", periods=40, freq="D", tz="UTC")
    df_in = pd.DataFrame({"DATE": dates, "market": "m", "price": 100 + np.arange(40) % 7, "extra": 1})
    df = load_prices(df_in)
    assert (df["date"] == df["date"].dt.normalize()).all()
    assert df["date"].dt.tz is None
    assert df["price"].tolist() == (100.0 + np.arange(40) % 7).tolist()


def test_dataframe_integer_dates_are_yyyymmdd_not_epoch():
    dates = [int(f"{d:%Y%m%d}") for d in pd.date_range("2020-01-01", periods=35)]
    df = load_prices(pd.DataFrame({"date": dates, "market": "m", "price": 100 + np.arange(35) % 7}))
    assert df["date"].iloc[0] == pd.Timestamp("2020-01-01")
    bad = pd.DataFrame({"date": [5] + dates[1:], "market": "m", "price": 100 + np.arange(35) % 7})
    raises(bad, ["row 1", "market 'm'", "'5'"])


def test_mixed_date_formats_and_timezones(tmp_path):
    rows = good_rows()
    rows[0] = "2020-01-01T00:00:00+01:00,A,100"
    rows[1] = "01/02/2020,A,101"
    rows[2] = "2020-01-03 14:00,A,99"
    df = load_prices(write(tmp_path, rows))
    assert df["date"].iloc[:3].tolist() == list(pd.date_range("2020-01-01", periods=3))


def test_blank_lines_keep_row_numbers(tmp_path):
    rows = good_rows()
    rows = rows[:2] + [""] + rows[2:6] + ["2020-03-01,A,oops"] + rows[6:]
    # 'oops' is on file line 9 -> data row 8 (blank line counted)
    raises(write(tmp_path, rows), ["row 8", "'A'", "2020-03-01", "'oops'"])


# --------------------------------------------------------------------------- bad files


def test_file_not_found(tmp_path):
    raises(tmp_path / "nope.csv", ["nope.csv", "not found"])


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    raises(path, ["empty"])


def test_header_only(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("date,market,price\n")
    raises(path, ["no data rows"])


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    content = ("date,market,price\n" + "\n".join(good_rows()) + "\n").encode()
    content = content.replace(b"2020-01-04,A,", b"2020-01-04,Z\xfcrich,")
    path.write_bytes(content)
    raises(path, ["UTF-8", "row 4"])


def test_ragged_rows(tmp_path):
    raises(write(tmp_path, with_bad_row("2020-02-01,A,5,6")), ["row 6", "'A'", "2020-02-01", "fields"])


def test_short_row_is_missing_value(tmp_path):
    raises(write(tmp_path, with_bad_row("2020-02-01,A")), ["row 6", "'A'", "2020-02-01", "missing price"])


# --------------------------------------------------------------------------- bad columns


def test_misspelt_column_suggests_name(tmp_path):
    msg = raises(write(tmp_path, good_rows(), header="date,market,prcie"), ["missing", "prcie"])
    assert "did you mean 'price'" in msg


def test_missing_market_column_lists_found(tmp_path):
    rows = [r.replace(",A,", ",") for r in good_rows()]
    msg = raises(write(tmp_path, rows, header="date,price"), ["'market'", "found columns", "'date'", "'price'"])
    assert "did you mean" not in msg


def test_both_price_and_return(tmp_path):
    rows = [r + ",0.1" for r in good_rows()]
    raises(write(tmp_path, rows, header="date,market,price,return"), ["pick one"])


def test_duplicated_header(tmp_path):
    rows = [r + ",1" for r in good_rows()]
    raises(write(tmp_path, rows, header="date,market,price,Price "), ["duplicated", "price"])


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("bad_value", "fragment"),
    [
        ("abc", "'abc' is not a number"),
        ("1,5", "fields"),  # an unquoted decimal comma makes the row ragged
        ('"1,5"', "'1,5' is not a number"),
        ("NaN", "NaN"),
        ("", "missing price"),
        ("NA", "missing price"),
        ("inf", "infinite"),
        ("-inf", "infinite"),
        ("1e400", "infinite"),
        ("0", "positive"),
        ("-3.5", "positive"),
    ],
)
def test_bad_price_values(tmp_path, bad_value, fragment):
    raises(
        write(tmp_path, with_bad_row(f"2020-02-01,A,{bad_value}")),
        ["row 6", "market 'A'", "2020-02-01", fragment],
    )


@pytest.mark.parametrize("quoted,value", [('"3,526.65"', 3526.65), ('"1,234,567"', 1234567.0), ('"12,000"', 12000.0)])
def test_prices_with_thousands_separators_read_as_volumes_do(tmp_path, quoted, value):
    """Issue #21: a price quoted with thousands separators is read (a decimal comma, ``"1,5"``, stays an error)."""
    frame = load_prices(write(tmp_path, with_bad_row(f"2020-02-01,A,{quoted}")))
    row = frame[(frame["market"] == "A") & (frame["date"] == pd.Timestamp("2020-02-01"))]
    assert row["price"].tolist() == [value]


def test_negative_returns_are_fine_but_nan_return_is_not(tmp_path):
    rows = [f"2020-01-{i + 1:02d},R,{-0.01 * (1 + i % 3)}" for i in range(30)]
    assert load_prices(write(tmp_path, rows, header="date,market,return"))["return"].lt(0).all()
    rows[9] = "2020-01-10,R,nan"
    path = write(tmp_path, rows, header="date,market,return", name="n.csv")
    raises(path, ["row 10", "'R'", "2020-01-10", "NaN"])


def test_dataframe_nan_names_row():
    df = pd.DataFrame(
        {"date": pd.date_range("2020-01-01", periods=40), "market": "m", "return": np.linspace(-1, 1, 40)}
    )
    df.loc[6, "return"] = math.nan
    raises(df, ["row 7", "market 'm'", "2020-01-07", "NaN"])


@pytest.mark.parametrize("bad_date", ["2020-13-45", "yesterday", "2020", "1.5"])
def test_unparseable_date(tmp_path, bad_date):
    raises(write(tmp_path, with_bad_row(f"{bad_date},A,5")), ["row 6", "market 'A'", repr(bad_date)])


def test_missing_date(tmp_path):
    raises(write(tmp_path, with_bad_row(",A,5")), ["row 6", "market 'A'", "missing date"])


def test_missing_market_name(tmp_path):
    raises(write(tmp_path, with_bad_row("2020-02-01, ,5")), ["row 6", "2020-02-01", "missing market"])


def test_duplicate_date_market(tmp_path):
    rows = good_rows("A") + good_rows("B")
    rows.insert(10, "2020-01-03,B,7")  # duplicates good_rows("B")[2] which is later at row 34
    raises(write(tmp_path, rows), ["market 'B'", "2020-01-03", "rows 11 and 35"])


def test_same_date_other_market_is_fine(tmp_path):
    df = load_prices(write(tmp_path, good_rows("A") + good_rows("B")))
    assert len(df) == 2 * N_GOOD


def test_intraday_duplicate_after_normalisation(tmp_path):
    rows = with_bad_row("2020-01-02 16:00,A,5")
    raises(write(tmp_path, rows), ["market 'A'", "2020-01-02", "rows 2 and 6"])


def test_too_few_observations(tmp_path):
    rows = good_rows("A") + good_rows("short", n=12)
    raises(write(tmp_path, rows), ["'short'", "11 returns", "at least 30"])
    df = load_prices(write(tmp_path, rows, name="ok.csv"), min_observations=11)
    assert set(df["market"]) == {"A", "short"}


def test_constant_price_series(tmp_path):
    rows = good_rows("A") + [f"2020-01-{i + 1:02d},flat,100" for i in range(31)]
    raises(write(tmp_path, rows), ["'flat'", "constant"])


def test_constant_return_series(tmp_path):
    rows = [f"2020-01-{i + 1:02d},R,0.001" for i in range(31)]
    raises(write(tmp_path, rows, header="date,market,return"), ["'R'", "constant"])


def test_bad_min_observations(tmp_path):
    with pytest.raises(ValueError, match="min_observations"):
        load_prices(write(tmp_path, good_rows()), min_observations=0)


def test_no_pandas_exception_escapes_on_garbage(tmp_path):
    path = tmp_path / "garbage.csv"
    path.write_text('date,market,price\n"unterminated,A,1\n2020-01-01,A,2\n')
    with pytest.raises(DataError):
        load_prices(path)
    path.write_text("\n\n\n")
    with pytest.raises(DataError):
        load_prices(path)
