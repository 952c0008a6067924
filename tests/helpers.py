"""Small helpers shared by the tests (imported as ``helpers``; pytest puts this folder on the path)."""

from __future__ import annotations

import pandas as pd
import torch

import regime_dmm as rd
from regime_dmm.data import FeaturePipeline, MarketSpec, ModelData, load_prices, simulate_markets
from regime_dmm.models import RegimeModel
from regime_dmm.training.variants import variant_for

#: Files every ``regime-dmm fit`` writes (besides the posterior export).
FIT_OUTPUTS = (
    "regimes.csv",
    "summary.json",
    "history.csv",
    "model.pt",
    "regimes.png",
    "regimes_filtered.png",
    "transitions.png",
    "usage.png",
    "training.png",
)


def two_regime_market(
    days: int,
    seed: int,
    means: tuple[float, float] = (0.0005, -0.001),
    sds: tuple[float, float] = (0.006, 0.02),
) -> pd.DataFrame:
    """A simulated long price frame of one business-day market ``a`` with regimes calm and volatile
    (usage 0.6 / 0.4, leave rates 0.03 / 0.05) from 2020-01-01."""
    spec = MarketSpec(
        name="a", start="2020-01-01", freq="B", usage=(0.6, 0.4), leave_rates=(0.03, 0.05), means=means, sds=sds
    )
    return simulate_markets([spec], seed=seed, n_days=days, regimes=("calm", "volatile")).frame


def head(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first ``n`` rows of each market."""
    return frame.groupby("market", sort=False).head(n).reset_index(drop=True)


def write_csv_frame(frame: pd.DataFrame, path) -> None:
    """A long price frame as the package's input CSV."""
    frame[["date", "market", "price"]].to_csv(path, index=False, date_format="%Y-%m-%d")


def model_and_data(
    config: rd.FitConfig,
    frame: pd.DataFrame,
    dtype: torch.dtype = torch.float64,
) -> tuple[RegimeModel, ModelData, FeaturePipeline]:
    """The model ``config`` builds for ``frame`` (via its variant), its tensors and the feature pipeline."""
    variant = variant_for(config)
    config = variant.resolve_config(config)
    table = load_prices(frame, min_observations=config.training.min_observations)
    pipeline = FeaturePipeline.fit(table, variant.feature_spec(config))
    panel = pipeline.transform(table)
    model = variant.build_model(config, pipeline.spec, panel, dtype)
    return model, pipeline.model_data(panel, dtype), pipeline


def stop_after(polls: int):
    """A ``stop_requested`` callable for ``rd.fit`` that turns true on its ``polls``-th call (fits poll it once an
    epoch), to stop a run at a chosen epoch."""
    calls = {"n": 0}

    def requested() -> bool:
        calls["n"] += 1
        return calls["n"] >= polls

    return requested


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (Linux ``/proc``; a zombie, exited but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
