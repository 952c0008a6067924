"""Regimes of the S&P 500 and the NASDAQ Composite, 1999-2018 (data shipped in `arch`).

    python experiments/real_data.py --out runs/real_data

Checks that the dot-com bust (2000-2002) and the financial crisis (2008-2009) show up as
the volatile/panic regimes, and writes the usual outputs plus `crises.csv` (share of
days of each crisis window in each regime) and `regimes_real.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import yaml

import regime_dmm as rd
from regime_dmm.outputs import write_outputs
from regime_dmm.plots import plot_regimes

CRISES = {
    "dot-com bust": ("2000-03-01", "2002-10-31"),
    "financial crisis": ("2008-09-01", "2009-06-30"),
    "calm 2004-2006": ("2004-01-01", "2006-12-31"),
    "calm 2017": ("2017-01-01", "2017-12-31"),
}


def load_arch_prices(markets: list[str]) -> pd.DataFrame:
    try:
        import arch.data.nasdaq
        import arch.data.sp500
    except ImportError as exc:  # optional extra
        raise SystemExit('this experiment needs the `arch` package: pip install "regime-dmm[compare]"') from exc
    loaders = {"sp500": arch.data.sp500.load, "nasdaq": arch.data.nasdaq.load}
    frames = []
    for name in markets:
        prices = loaders[name]()["Adj Close"]
        frames.append(pd.DataFrame({"date": prices.index, "market": name, "price": prices.to_numpy()}))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).with_suffix(".yaml")))
    parser.add_argument("--out", default="runs/real_data")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.config).read_text())
    markets = spec.pop("markets")
    config = rd.FitConfig.from_dict(spec)
    fit = rd.fit(load_arch_prices(markets), config, log=print)
    out = Path(args.out)
    write_outputs(fit, out, overwrite=True)
    rows = []
    for m in fit.markets:
        regimes = pd.Series(m.smoothed.argmax(-1), index=m.dates)
        for crisis, (start, end) in CRISES.items():
            window = regimes.loc[start:end]
            shares = window.value_counts(normalize=True).reindex(range(len(fit.regimes)), fill_value=0.0)
            rows.append(
                {
                    "market": m.name,
                    "window": crisis,
                    "days": len(window),
                    **{name: round(float(shares[k]), 3) for k, name in enumerate(fit.regimes)},
                }
            )
    table = pd.DataFrame(rows)
    table.to_csv(out / "crises.csv", index=False)
    print(table.to_string(index=False))
    fig = plot_regimes(fit, market=markets[0])
    fig.savefig(out / "regimes_real.png", dpi=110)
    print(f"wrote {out}/")


if __name__ == "__main__":
    main()
