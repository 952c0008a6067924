"""Property-based fuzzing of the loader and the CLI: random and mutated CSVs either load
(and then fit) or fail with the package's own error type, never an unhandled exception."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import regime_dmm as rd
from regime_dmm.cli import main
from regime_dmm.errors import RegimeDMMError

GOOD = rd.simulate_default(0, n_days=60).frame.assign(date=lambda d: d["date"].dt.strftime("%Y-%m-%d"))
GOOD_CSV = GOOD.to_csv(index=False)

cells = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e400",
            "1e-400",
            "0",
            "-1",
            "abc",
            "2020-13-45",
            "NA",
            "1,5",
            "\x00",
            "\u00e9",
            "9" * 40,
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)


def mutate(data: st.DataObject) -> bytes:
    lines = GOOD_CSV.splitlines()
    kind = data.draw(st.sampled_from(["cell", "header", "drop", "dup", "shuffle", "encoding", "column", "truncate"]))
    rows = [line.split(",") for line in lines]
    if kind == "cell":
        for _ in range(data.draw(st.integers(1, 5))):
            r = data.draw(st.integers(0, len(rows) - 1))
            c = data.draw(st.integers(0, 2))
            rows[r][c] = data.draw(cells).replace(",", ";").replace("\n", " ")
    elif kind == "header":
        rows[0] = data.draw(
            st.lists(st.sampled_from(["date", "market", "price", "return", "Price", "x", ""]), min_size=1, max_size=4)
        )
    elif kind == "drop":
        keep = data.draw(st.integers(0, len(rows)))
        rows = rows[:keep]
    elif kind == "dup":
        r = data.draw(st.integers(1, len(rows) - 1))
        rows.insert(r, list(rows[r]))
    elif kind == "shuffle":
        body = rows[1:]
        order = data.draw(st.permutations(range(len(body))))
        rows = [rows[0]] + [body[i] for i in order]
    elif kind == "column":
        for row in rows:
            row.append(data.draw(cells).replace(",", ";").replace("\n", " "))
    elif kind == "truncate":
        text = "\n".join(",".join(r) for r in rows)
        return text[: data.draw(st.integers(0, len(text)))].encode()
    text = "\n".join(",".join(r) for r in rows) + "\n"
    if kind == "encoding":
        return text.encode("utf-16") if data.draw(st.booleans()) else b"\xff\xfe\x00" + text.encode("latin-1")
    return text.encode("utf-8", errors="surrogatepass")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_loader_never_raises_anything_but_data_errors(tmp_path, data):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(mutate(data))
    try:
        frame = rd.load_prices(path)
    except RegimeDMMError as exc:
        assert str(exc)  # a message that says what is wrong
        return
    value = frame.attrs["value_column"]
    assert np.isfinite(frame[value]).all()
    assert not frame.duplicated(["date", "market"]).any()
    if value == "price":
        assert (frame["price"] > 0).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0, max_size=80),
    column=st.sampled_from(["price", "return"]),
)
def test_dataframes_with_extreme_values(values, column):
    frame = pd.DataFrame({"date": pd.bdate_range("2020-01-01", periods=len(values)), "market": "m", column: values})
    try:
        loaded = rd.load_prices(frame)
    except RegimeDMMError:
        return
    assert np.isfinite(loaded[column]).all()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_cli_fits_or_exits_2(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("cli")
    path = tmp / "fuzz.csv"
    path.write_bytes(mutate(data))
    out = tmp / "out"
    rc = main(
        [
            "fit",
            "--data",
            str(path),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--restarts",
            "1",
            "--quiet",
            "--no-plots",
            "--regimes",
            "2",
        ]
    )
    assert rc in (0, 2)
    if rc == 2:
        assert not out.exists() or not any(p.name != "checkpoint.pt" for p in out.iterdir())
    else:
        assert (out / "regimes.csv").exists()


@pytest.mark.parametrize("scale", [1e-12, 1e12])
def test_huge_and_tiny_prices_fit_with_finite_results(scale):
    frame = rd.simulate_default(1, n_days=120).frame
    frame["price"] = frame["price"] * scale
    fit = rd.fit(frame, rd.FitConfig().replace(training={"epochs": 5, "restarts": 1}))
    assert np.isfinite(fit.log_likelihood)
    for m in fit.markets:
        assert np.allclose(m.smoothed.sum(-1), 1.0)
