"""Small helpers shared by the tests (imported as ``helpers``; pytest puts this folder on the path)."""

from __future__ import annotations

import pandas as pd
import torch

import regime_dmm as rd
from regime_dmm.data import FeaturePipeline, ModelData, load_prices
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
