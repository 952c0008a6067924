"""Load and validate daily price (or return) series in long format.

The input is a CSV file or a :class:`pandas.DataFrame` with one row per
(date, market) observation::

    date,market,price
    2015-01-02,traditional_cre,100.0
    2015-01-05,traditional_cre,100.41
    ...

Columns ``date`` and ``market`` are required, plus exactly one of ``price`` or
``return`` (daily log returns); an optional ``volume`` or ``trades`` column marks
days without trading (0). Column names are compared after stripping whitespace,
case-insensitively; other columns are ignored.

Other shapes users have are recognised from the header and turned into the long table
(``df.attrs["shapes"]`` says which shape each source had):

* a single-market vendor export, ``Date, Open, High, Low, Close, Adj Close, Volume``
  (Yahoo and the like; ``Close`` alone will do): the market is named after the file and the
  adjusted close is used where present;
* an exchange's daily kline export (``open_time`` timestamps, ``close``, ``volume``, ``trades``,
  e.g. Binance): the same, with timezone-aware timestamps read as dates;
* a long table whose market column is called ``symbol``, ``ticker``, ``coin`` or ``asset``,
  and whose value column is ``close`` / ``adj close`` (CoinMarketCap's export);
* a wide table: ``date`` plus one price column per market (an empty cell: no price that day).

Several sources (a list of paths or DataFrames) are read one by one and stacked; a market
may appear in only one of them.

Everything is read as text first and converted here, so that every problem is
reported as a :class:`~regime_dmm.errors.DataError` naming the market, the data
row (row 1 is the first line after the header; for a DataFrame, its first row)
and the date. No pandas or numpy exception escapes :func:`load_prices`.
"""

from __future__ import annotations

import difflib
import io
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from regime_dmm.errors import ConfigError, DataError

__all__ = ["load_prices", "read_prices", "VALUE_COLUMNS", "REQUIRED_COLUMNS"]

#: Columns every input must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("date", "market")
#: Exactly one of these holds the values.
VALUE_COLUMNS: tuple[str, ...] = ("price", "return")

# Texts read as "this value is missing" rather than "this is not a number".
_MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "-", "--", "#n/a", "nat"})
# Separators tried when the header line contains no comma.
_ALTERNATIVE_SEPARATORS = (";", "\t", "|")
# Pure digit strings that are not YYYYMMDD are rejected as dates (pandas would
# read "2020" as 2020-01-01, which hides a swapped column).
_DIGITS_ONLY = re.compile(r"^\d+$")


# ---------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------


Source: TypeAlias = str | Path | pd.DataFrame


def load_prices(source: Source | Sequence[Source], *, min_observations: int = 30) -> pd.DataFrame:
    """Read, validate and sort a price or return table (or several) for fitting.

    Parameters
    ----------
    source:
        Path (``str`` or :class:`~pathlib.Path`) of a UTF-8 CSV file, or a
        DataFrame, with columns ``date``, ``market`` and one of ``price`` /
        ``return`` (or another recognised shape, see the module docstring); or a
        list of them.
    min_observations:
        Minimum number of returns per market (``n_prices - 1`` for price
        input, ``n_rows`` for return input).

    Returns
    -------
    pandas.DataFrame
        Columns ``date`` (``datetime64[ns]``, midnight, timezone-naive),
        ``market`` (str) and ``price`` or ``return`` (float64), sorted by
        market (in order of first appearance in the input) then date, with a
        fresh ``RangeIndex``; ``volume`` and ``trades`` (float64, NaN where not
        given) when a source has them. ``df.attrs["value_column"]`` is ``"price"`` or
        ``"return"``; ``df.attrs["label"]`` names the source in messages and
        ``df.attrs["shapes"]`` lists each source's recognised shape.

    Raises
    ------
    DataError
        For any unusable input; the message names the market, row and date.
    ConfigError
        If ``min_observations`` is not an integer >= 1.
    """
    if isinstance(min_observations, bool) or not isinstance(min_observations, numbers.Integral):
        raise ConfigError(f"min_observations must be an integer, got {min_observations!r}")
    if min_observations < 1:
        raise ConfigError(f"min_observations must be at least 1, got {min_observations}")
    return _load_many(source, int(min_observations))


def read_prices(source: Source | Sequence[Source], *, label: str | None = None) -> pd.DataFrame:
    """Read and validate a long-format table row by row, without the per-market checks of a fit.

    The same reader and messages as :func:`load_prices` (columns, dates, values, duplicate
    rows), but a market may have any number of rows and may be constant: for new days
    appended to a fitted series (nowcasts), whose checks are made against the fitted data.
    ``label`` names the source in messages (default: the path, or "input DataFrame").
    Returns the same table as :func:`load_prices`; raises :class:`DataError`.
    """
    return _load_many(source, None, label)


def _load_many(
    source: Source | Sequence[Source], min_observations: int | None, label: str | None = None
) -> pd.DataFrame:
    if isinstance(source, (str, Path, pd.DataFrame)):
        return _load(source, min_observations, label)
    if not isinstance(source, Sequence) or not source:
        raise TypeError(f"source must be a path, a DataFrame or a non-empty list of them, got {source!r}")
    frames = [_load(item, min_observations, label) for item in source]
    kinds = {f.attrs["value_column"] for f in frames}
    if len(kinds) > 1:
        raise DataError(
            "the sources mix prices and returns: "
            + ", ".join(f"{f.attrs['label']} gives {f.attrs['value_column']}s" for f in frames)
        )
    owner: dict[str, str] = {}
    for f in frames:
        for market in pd.unique(f["market"]):
            if market in owner:
                raise DataError(
                    f"market '{market}' appears in {owner[market]} and in {f.attrs['label']}; "
                    "each market must come from one source (rename one of them)"
                )
            owner[market] = f.attrs["label"]
    out = pd.concat(frames, ignore_index=True)
    out.attrs = {
        "value_column": kinds.pop(),
        "label": ", ".join(f.attrs["label"] for f in frames),
        "shapes": [s for f in frames for s in f.attrs["shapes"]],
    }
    return out


def _load(source: Source, min_observations: int | None, label: str | None = None) -> pd.DataFrame:
    default_market = None
    if isinstance(source, pd.DataFrame):
        label = label or "input DataFrame"
        header = [str(c) for c in source.columns]
        columns = {i: source.iloc[:, i] for i in range(source.shape[1])}
        row_numbers = np.arange(1, len(source) + 1)
    elif isinstance(source, (str, Path)):
        read_label, header, columns, row_numbers = _read_csv(Path(source))
        label = label or read_label
        default_market = Path(source).stem
    else:
        raise TypeError(f"source must be a path (str or Path) or a pandas DataFrame, got {type(source).__name__}")

    try:
        frame, shape = _validate(label, header, columns, row_numbers, min_observations, default_market)
    except DataError:
        raise
    except Exception as exc:  # pragma: no cover - defensive: never leak pandas/numpy errors
        raise DataError(f"{label}: could not validate the data ({type(exc).__name__}: {exc})") from exc
    frame.attrs["label"] = label
    frame.attrs["shapes"] = [f"{label}: {shape}"]
    return frame


# ---------------------------------------------------------------------------
# reading a CSV file as text
# ---------------------------------------------------------------------------


def _read_csv(path: Path) -> tuple[str, list[str], dict[int, pd.Series], np.ndarray]:
    """Read ``path`` as all-text columns.

    Returns ``(label, header, columns, row_numbers)``: the raw header names, a
    mapping column position -> Series of stripped strings (blank lines removed),
    and the 1-based data row number of each remaining row.
    """
    label = str(path)
    if not path.exists():
        raise DataError(f"{label}: file not found")
    if path.is_dir():
        raise DataError(f"{label}: is a directory, expected a CSV file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{label}: cannot read file ({exc.strerror or exc})") from exc

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        where = "in the header" if line == 1 else f"at row {line - 1}"
        raise DataError(
            f"{label}: the file is not valid UTF-8 text (undecodable byte 0x{raw[exc.start]:02x} "
            f"{where}, byte offset {exc.start}); save it as UTF-8 CSV"
        ) from exc

    if not text.strip():
        raise DataError(f"{label}: the file is empty (expected a header line 'date,market,price')")

    first_line = text.lstrip("\r\n").splitlines()[0]
    sep = ","
    if "," not in first_line:
        for candidate in _ALTERNATIVE_SEPARATORS:
            if candidate in first_line:
                sep = candidate
                break

    try:
        table = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=None,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            skipinitialspace=True,
            engine="c",
        )
    except Exception as exc:  # pandas ParserError, EmptyDataError, ...
        raise DataError(_describe_parser_error(label, text, sep, exc)) from exc

    table = table.astype(object).where(table.notna(), "")
    cells = table.map(lambda v: str(v).strip())
    # Line numbers before removing blank lines: pandas row i is file line i+1.
    nonblank = (cells != "").any(axis=1).to_numpy()
    positions = np.flatnonzero(nonblank)
    if positions.size == 0:
        raise DataError(f"{label}: the file is empty (expected a header line 'date,market,price')")
    header_pos = int(positions[0])
    header = [str(v) for v in cells.iloc[header_pos].tolist()]
    data_pos = positions[positions > header_pos]
    if data_pos.size == 0:
        raise DataError(f"{label}: the file has a header but no data rows")
    data = cells.iloc[data_pos]
    row_numbers = data_pos - header_pos  # row 1 = first line after the header
    columns = {i: data.iloc[:, i].reset_index(drop=True) for i in range(data.shape[1])}
    return label, header, columns, np.asarray(row_numbers, dtype=np.int64)


def _describe_parser_error(label: str, text: str, sep: str, exc: Exception) -> str:
    """Turn a pandas parser error into a message naming the data row, market and date."""
    msg = str(exc).strip()
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg)
    if not match:
        return f"{label}: cannot parse the CSV file: {msg}"
    expected, line_no, saw = (int(g) for g in match.groups())
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), 0)
    row = line_no - 1 - first
    header = [h.strip().lower() for h in lines[first].split(sep)] if lines else []
    fields = [f.strip() for f in lines[line_no - 1].split(sep)] if 0 < line_no <= len(lines) else []
    context = []
    for name in ("market", "date"):
        if name in header and header.index(name) < len(fields):
            value = fields[header.index(name)]
            context.append(f"market '{value}'" if name == "market" else f"date {value}")
    where = ", ".join([f"row {row}"] + context)
    return (
        f"{label}, {where}: the row has {saw} fields but the header has {expected} "
        "(ragged CSV: check for extra separators or unquoted commas)"
    )


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


_SYNONYMS: dict[str, tuple[str, ...]] = {
    "date": ("date", "datetime", "timestamp", "time", "open time", "day"),
    "market": ("market", "symbol", "ticker", "coin", "asset"),
    "adj close": ("adj close", "adjclose", "adjusted close"),
    "close": ("close", "close price"),
    "volume": ("volume", "vol"),
    "trades": ("trades", "number of trades", "num trades", "trade count"),
}
# Columns of OHLC exports that are not markets in a wide table.
_OHLC = (
    "open",
    "high",
    "low",
    "close",
    "adj close",
    "adjclose",
    "adjusted close",
    "volume",
    "vol",
    "trades",
    "market cap",
    "quote asset volume",
    "taker buy base",
    "taker buy quote",
    "ignore",
    "close time",
)


def _canonical(name: str) -> str:
    """Header name for matching: lower case, ``_``/``*``/spaces collapsed (``Adj_Close*`` -> ``adj close``)."""
    return re.sub(r"[\s_*]+", " ", str(name).strip().lower()).strip()


@dataclass
class _Layout:
    """Where a source's fields are, and its shape in words."""

    shape: str
    date: int
    value_column: str  # "price" or "return"
    market: int | None = None
    market_name: str | None = None  # a single-market file
    value: int | None = None
    wide: list[tuple[int, str]] = field(default_factory=list)  # (column, market) of a wide table
    volume: int | None = None
    trades: int | None = None


def _empty(col: pd.Series) -> bool:
    return bool(col.map(_is_missing).all())


def _resolve_layout(
    label: str, header: Sequence[str], columns: dict[int, pd.Series], default_market: str | None
) -> _Layout:
    """Recognise the source's shape from its header (see the module docstring); :class:`DataError` otherwise."""
    names = [h.strip().lower() for h in header]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            continue  # unnamed columns (e.g. a written index) are ignored
        if name in seen:
            if i in columns and _empty(columns[i]):
                continue  # a repeated, empty column (some exchange exports end with one)
            if seen[name] in columns and _empty(columns[seen[name]]):
                seen[name] = i
                continue
            raise DataError(
                f"{label}: duplicated column name '{name}' (columns {seen[name] + 1} and {i + 1}: "
                f"{header[seen[name]]!r} and {header[i]!r}); each column name must appear once"
            )
        seen[name] = i

    found = ", ".join(repr(h.strip()) for h in header if h.strip()) or "none"
    if "price" in seen and "return" in seen:
        raise DataError(
            f"{label}: both a 'price' and a 'return' column were found; pick one (drop or rename the other column)"
        )
    canonical = {_canonical(n): i for n, i in seen.items()}

    def first(role: str) -> int | None:
        for synonym in _SYNONYMS[role]:
            if synonym in canonical:
                return canonical[synonym]
        return None

    date = seen.get("date", first("date"))
    market = seen.get("market", first("market"))
    volume, trades = first("volume"), first("trades")
    has_value = "price" in seen or "return" in seen
    if has_value and date is not None and market is not None:
        value_column = "price" if "price" in seen else "return"
        return _Layout(
            "long table", date, value_column, market=market, value=seen[value_column], volume=volume, trades=trades
        )
    close = first("adj close")
    close = close if close is not None else first("close")
    if not has_value and date is not None and close is not None:
        used = header[close].strip()
        if market is not None:
            return _Layout(
                f"long table of {used!r} prices by {header[market].strip()!r}",
                date,
                "price",
                market=market,
                value=close,
                volume=volume,
                trades=trades,
            )
        if default_market is not None:
            kind = "kline export" if _canonical(header[date]) in ("open time", "timestamp") else "vendor export"
            return _Layout(
                f"{kind} of one market, '{default_market}' (named after the file), {used!r} prices",
                date,
                "price",
                market_name=default_market,
                value=close,
                volume=volume,
                trades=trades,
            )
    if not has_value and close is None and date is not None and market is None:
        wide = [(i, header[i].strip()) for n, i in seen.items() if i != date and _canonical(n) not in _OHLC]
        if wide:
            listed = ", ".join(name for _, name in wide)
            return _Layout(f"wide table, one price column per market ({listed})", date, "price", wide=wide)

    missing = [c for c in REQUIRED_COLUMNS if c not in seen]
    if not has_value:
        missing.append("price' or 'return")
    unknown = [n for n in seen if n not in REQUIRED_COLUMNS + VALUE_COLUMNS]
    hints = []
    for wanted in missing:
        targets = wanted.split("' or '")
        for target in targets:
            close_match = difflib.get_close_matches(target, unknown, n=1, cutoff=0.6)
            if close_match:
                hints.append(f"did you mean '{target}' instead of '{close_match[0]}'?")
                unknown.remove(close_match[0])
                break
    listed = ", ".join(f"'{m}'" for m in missing)
    msg = f"{label}: missing column(s) {listed}; found columns: {found}"
    if hints:
        msg += "; " + " ".join(hints)
    if len(seen) == 1 and _sep_hint(header):
        msg += "; " + _sep_hint(header)
    raise DataError(msg)


def _sep_hint(header: Sequence[str]) -> str:
    """A hint when a single header cell looks like a differently separated header."""
    cell = header[0] if header else ""
    for candidate in (",", ";", "\t", "|", " "):
        if candidate in cell.strip():
            return f"the header {cell.strip()!r} looks like it is not comma-separated"
    return ""


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value.strip().lower() in _MISSING_MARKERS:
        return True
    return False


def _where(label: str, row: int, market: str | None = None, date: str | None = None) -> str:
    parts = [f"row {row}"]
    if market is not None:
        parts.append(f"market '{market}'")
    if date is not None:
        parts.append(f"date {date}")
    return f"{label}, " + ", ".join(parts)


def _and_more(count: int) -> str:
    return f" ({count - 1} more such row{'s' if count > 2 else ''})" if count > 1 else ""


def _parse_markets(label: str, col: pd.Series, rows: np.ndarray, date_col: pd.Series) -> np.ndarray:
    values = col.tolist()
    out = np.empty(len(values), dtype=object)
    bad: list[int] = []
    for i, v in enumerate(values):
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            bad.append(i)
            continue
        name = str(v).strip()
        if not name:
            bad.append(i)
            continue
        out[i] = name
    if bad:
        i = bad[0]
        raw_date = date_col.iloc[i]
        date = None if _is_missing(raw_date) else str(raw_date).strip()
        raise DataError(f"{_where(label, int(rows[i]), date=date)}: missing market name{_and_more(len(bad))}")
    return out


def _parse_one_date(value: Any) -> pd.Timestamp | None:
    """Parse a single date; ``None`` when it cannot be parsed."""
    if _is_missing(value):
        return None
    if isinstance(value, str) and _DIGITS_ONLY.match(value.strip()) and len(value.strip()) != 8:
        return None
    try:
        ts = pd.Timestamp(value.strip() if isinstance(value, str) else value)
    except Exception:
        return None
    if ts is pd.NaT or pd.isna(ts):
        return None
    if ts.tzinfo is not None:
        ts = ts.tz_localize(None)
    return ts.normalize()


def _parse_dates(label: str, col: pd.Series, markets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Return datetime64[ns] midnight dates; raise on the first bad one."""
    values = pd.Series(col.tolist(), dtype=object)
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        parsed = pd.to_datetime(col.reset_index(drop=True))
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_localize(None)
    else:
        # Numbers become text, so 20200131 reads as a date, not nanoseconds since 1970.
        text = values.map(
            lambda v: (
                v.strip()
                if isinstance(v, str)
                else (str(v) if isinstance(v, numbers.Number) and not _is_missing(v) else v)
            )
        )
        try:
            parsed = pd.to_datetime(text, format="mixed", errors="coerce")
        except Exception:
            parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_localize(None)
        parsed = parsed.astype("datetime64[ns]")
        digits_only = text.map(lambda v: isinstance(v, str) and bool(_DIGITS_ONLY.match(v)) and len(v) != 8).to_numpy(
            dtype=bool
        )
        parsed[digits_only] = pd.NaT
        # Retry failures one by one (mixed timezone offsets make pandas give up
        # on the whole column).
        for i in np.flatnonzero(parsed.isna().to_numpy()):
            ts = _parse_one_date(text.iloc[i])
            if ts is not None:
                parsed.iloc[i] = ts
    parsed = pd.Series(parsed).astype("datetime64[ns]").dt.normalize()
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        first = int(bad[0])
        raw = values.iloc[first]
        what = "missing date" if _is_missing(raw) else f"cannot parse date {str(raw).strip()!r}"
        raise DataError(
            f"{_where(label, int(rows[first]), markets[first])}: {what}{_and_more(bad.size)} "
            "(use ISO dates such as 2020-01-31)"
        )
    return parsed.to_numpy(dtype="datetime64[ns]")


def _parse_values(
    label: str,
    col: pd.Series,
    value_column: str,
    markets: np.ndarray,
    dates: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """Convert the value column to float64; raise on missing/non-numeric/inf/<=0."""
    day = np.datetime_as_string(dates, unit="D")

    def where(i: int) -> str:
        return _where(label, int(rows[i]), markets[i], str(day[i]))

    values = col.tolist()
    out = np.empty(len(values), dtype=np.float64)
    missing: list[int] = []
    non_numeric: list[int] = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or isinstance(v, (np.bool_,)):
            non_numeric.append(i)
            continue
        is_nan = (isinstance(v, str) and v.strip().lower() == "nan") or (
            isinstance(v, (float, np.floating)) and math.isnan(v)
        )
        if _is_missing(v) and not is_nan:  # NaN itself is reported below
            missing.append(i)
            continue
        if isinstance(v, str) and "_" in v:  # float() would accept '1_000'
            non_numeric.append(i)
            continue
        if isinstance(v, str) and _THOUSANDS.match(v.strip()):  # "3,526.65": thousands separators, as in volumes
            v = v.replace(",", "")
        try:
            out[i] = float(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError, OverflowError):
            non_numeric.append(i)
    if missing or non_numeric:
        first_missing = missing[0] if missing else len(values)
        first_bad = non_numeric[0] if non_numeric else len(values)
        if first_missing <= first_bad:
            raise DataError(f"{where(first_missing)}: missing {value_column}{_and_more(len(missing))}")
        raw = values[first_bad]
        raise DataError(
            f"{where(first_bad)}: {value_column} {str(raw).strip()!r} is not a number{_and_more(len(non_numeric))}"
        )

    nan = np.flatnonzero(np.isnan(out))
    if nan.size:
        raise DataError(f"{where(int(nan[0]))}: {value_column} is NaN{_and_more(nan.size)}")
    inf = np.flatnonzero(np.isinf(out))
    if inf.size:
        raise DataError(f"{where(int(inf[0]))}: {value_column} is infinite ({out[inf[0]]}){_and_more(inf.size)}")
    if value_column == "price":
        nonpos = np.flatnonzero(out <= 0)
        if nonpos.size:
            i = int(nonpos[0])
            raise DataError(f"{where(i)}: price must be positive, got {out[i]:g}{_and_more(nonpos.size)}")
    return out


#: A number written with thousands separators: groups of three digits after the first comma ("3,526.65",
#: "1,234,567"); a decimal comma ("1,5") does not match and stays an error.
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")


def _parse_counts(
    label: str, col: pd.Series, name: str, markets: np.ndarray, dates: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """A volume or trades column as float64: NaN where empty; thousands separators allowed; >= 0."""
    day = np.datetime_as_string(dates, unit="D")
    out = np.full(len(col), np.nan)
    for i, v in enumerate(col.tolist()):
        if _is_missing(v):
            continue
        text = str(v).strip().replace(",", "") if isinstance(v, str) else v
        try:
            out[i] = float(text)
        except (TypeError, ValueError, OverflowError):
            raise DataError(
                f"{_where(label, int(rows[i]), markets[i], str(day[i]))}: {name} {str(v).strip()!r} is not a number"
            ) from None
        if not np.isfinite(out[i]) or out[i] < 0:
            raise DataError(
                f"{_where(label, int(rows[i]), markets[i], str(day[i]))}: {name} must be a count >= 0, got {out[i]:g}"
            )
    return out


def _validate(
    label: str,
    header: Sequence[str],
    columns: dict[int, pd.Series],
    rows: np.ndarray,
    min_observations: int | None,
    default_market: str | None = None,
) -> tuple[pd.DataFrame, str]:
    if len(rows) == 0:
        raise DataError(f"{label}: no data rows")
    layout = _resolve_layout(label, header, columns, default_market)
    value_column = layout.value_column
    date_col = columns[layout.date].reset_index(drop=True)
    extra: dict[str, pd.Series] = {}
    if layout.wide:  # one long row per non-empty cell
        parts = [
            (c, name, ~columns[c].reset_index(drop=True).map(_is_missing).to_numpy(dtype=bool))
            for c, name in layout.wide
        ]
        market_col = pd.Series(
            np.concatenate([np.full(int(keep.sum()), name, dtype=object) for _, name, keep in parts])
        )
        value_col = pd.concat([columns[c].reset_index(drop=True)[keep] for c, _, keep in parts], ignore_index=True)
        date_col = pd.concat([date_col[keep] for _, _, keep in parts], ignore_index=True)
        rows = np.concatenate([rows[keep] for _, _, keep in parts])
        if len(rows) == 0:
            raise DataError(f"{label}: the wide table holds no prices")
    else:
        if layout.market is not None:
            market_col = columns[layout.market].reset_index(drop=True)
        else:
            market_col = pd.Series([layout.market_name] * len(rows), dtype=object)
        assert layout.value is not None
        value_col = columns[layout.value].reset_index(drop=True)
        for name, index in (("volume", layout.volume), ("trades", layout.trades)):
            if index is not None:
                extra[name] = columns[index].reset_index(drop=True)

    markets = _parse_markets(label, market_col, rows, date_col)
    dates = _parse_dates(label, date_col, markets, rows)
    values = _parse_values(label, value_col, value_column, markets, dates, rows)

    frame = pd.DataFrame({"date": dates, "market": markets, value_column: values, "_row": rows})
    for name, col in extra.items():
        frame[name] = _parse_counts(label, col, name, markets, dates, rows)

    # Duplicate (market, date) pairs: name both rows.
    dup_later = frame.duplicated(["market", "date"], keep="first").to_numpy()
    if dup_later.any():
        j = int(np.flatnonzero(dup_later)[0])
        same = (frame["market"].to_numpy() == markets[j]) & (frame["date"].to_numpy() == dates[j])
        i = int(np.flatnonzero(same)[0])
        day = np.datetime_as_string(dates[j], unit="D")
        raise DataError(
            f"{label}: market '{markets[j]}' has two rows for date {day} "
            f"(rows {int(rows[i])} and {int(rows[j])}); each (date, market) must appear once"
        )

    order = list(dict.fromkeys(markets.tolist()))
    frame["market"] = pd.Categorical(frame["market"], categories=order, ordered=True)
    frame = frame.sort_values(["market", "date"], kind="stable").reset_index(drop=True)
    frame["market"] = frame["market"].astype(object).astype(str)

    if min_observations is not None:
        _check_markets(label, frame, value_column, min_observations)

    frame = frame.drop(columns="_row")
    frame["date"] = frame["date"].astype("datetime64[ns]")
    frame[value_column] = frame[value_column].astype(np.float64)
    frame.attrs["value_column"] = value_column
    return frame, layout.shape


def _check_markets(label: str, frame: pd.DataFrame, value_column: str, min_observations: int) -> None:
    """Each market has at least ``min_observations`` returns and is not constant (fit requirements)."""
    for name, group in frame.groupby("market", sort=False):
        v = group[value_column].to_numpy()
        n_returns = len(v) - 1 if value_column == "price" else len(v)
        if n_returns < min_observations:
            if value_column == "price":
                unit = f"{len(v)} prices, i.e. {n_returns} returns"
            else:
                unit = f"{n_returns} returns"
            raise DataError(f"{label}: market '{name}' has {unit}; at least {min_observations} returns are required")
        r = np.diff(np.log(v)) if value_column == "price" else v
        if r.size == 0 or np.allclose(r, r[0], rtol=1e-9, atol=1e-12):
            if value_column == "price" and np.all(v == v[0]):
                what = "price never changes"
            else:
                what = "all returns are equal"
            rows_span = f"rows {int(group['_row'].min())}-{int(group['_row'].max())}"
            raise DataError(
                f"{label}: market '{name}' is a constant series ({what}, {rows_span}); "
                "its volatility cannot be modelled"
            )
