"""Every mode x guide x emission x features combination fits, reports, saves and reloads.

Tiny data and a few epochs: what is checked is that each variant runs end to end through the
same interface (fit -> fitted model -> results -> outputs -> load_fit), not its accuracy.
Combinations a mode does not use (the relaxed mode has its own guide; classic mode pins a
Gaussian emission of the return) are not repeated.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import regime_dmm as rd
from regime_dmm.outputs import write_outputs

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = (
    [
        ("exact", guide, emission, features)
        for guide in ("map", "normal")
        for emission in ("gaussian", "studentt")
        for features in (("return",), ("return", "vol"))
    ]
    + [
        ("relaxed", "map", emission, features)
        for emission in ("gaussian", "studentt")
        for features in (("return",), ("return", "vol"))
    ]
    + [("classic", "map", "gaussian", ("return",))]
)


@pytest.fixture(scope="module")
def frame():
    frame = rd.simulate_default(2, n_days=81).frame
    frame.attrs.clear()
    return frame


@pytest.mark.parametrize("mode,guide,emission,features", GRID, ids=lambda v: "+".join(v) if isinstance(v, tuple) else v)
def test_fit_report_save_and_reload(frame, tmp_path, mode, guide, emission, features):
    config = rd.FitConfig().replace(
        model={"num_regimes": 3, "emission": emission, "features": list(features), "classic": mode == "classic"},
        training={
            "inference": "exact" if mode == "classic" else mode,
            "guide": guide,
            "epochs": 3,
            "restarts": 1,
            "window_length": 16,
            "batch_windows": 4,
        },
    )
    fit = rd.fit(frame, config)
    regimes = fit.regimes_frame()
    probs = regimes[[f"prob_{r}" for r in fit.regimes]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-6) and np.isfinite(fit.log_likelihood)
    assert fit.fitted is not None and fit.num_parameters == fit.fitted.num_parameters() > 0
    expected_guide = {"classic": "classic", "relaxed": "relaxed"}.get(mode, guide)
    assert fit.fitted.guide.kind == expected_guide
    summary = json.loads(json.dumps(fit.summary()))
    assert set(summary["markets"]) == set(pd.unique(frame["market"]))
    out = write_outputs(fit, tmp_path / "run", plots=False, num_samples=3)
    loaded = rd.load_fit(out, data=frame)
    pd.testing.assert_frame_equal(loaded.regimes_frame(), regimes)
    assert json.loads(json.dumps(loaded.summary())) == summary
