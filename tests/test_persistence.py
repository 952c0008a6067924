"""Saved fits: load_fit round trip (no refit), refusal of other data or a tampered model.pt, `regime-dmm report`."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from regime_dmm import FitConfig, fit
from regime_dmm.cli import main
from regime_dmm.data import simulate_default, write_csv
from regime_dmm.errors import CheckpointError
from regime_dmm.outputs import write_outputs
from regime_dmm.persistence import load_fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _small(seed: int, days: int = 150) -> pd.DataFrame:
    frame = simulate_default(seed=seed, n_days=days).frame
    frame.attrs.clear()
    return frame


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small DMM fit (networks, MAP guide) on a CSV, written with write_outputs."""
    root = tmp_path_factory.mktemp("persist")
    csv = root / "prices.csv"
    data = simulate_default(seed=11, n_days=150)
    write_csv(data, csv)
    config = FitConfig().replace(model={"num_regimes": 2}, training={"epochs": 6, "restarts": 1})
    result = fit(csv, config)
    out = write_outputs(result, root / "run", plots=False)
    return result, out, csv


def _normalised(summary: dict) -> dict:
    return json.loads(json.dumps(summary))


def test_round_trip_equals_the_original(saved):
    original, out, _ = saved
    loaded = load_fit(out)  # data from the CSV path stored in model.pt
    pd.testing.assert_frame_equal(loaded.regimes_frame(), original.regimes_frame())
    assert _normalised(loaded.summary()) == _normalised(original.summary())
    assert _normalised(loaded.summary()) == json.loads((out / "summary.json").read_text())
    for m_orig, m_new in zip(original.markets, loaded.markets):
        np.testing.assert_array_equal(m_new.filtered, m_orig.filtered)
        pd.testing.assert_frame_equal(loaded.forecast(m_new.name, 5), original.forecast(m_orig.name, 5))
    assert loaded.data_fingerprint == original.data_fingerprint
    assert len(loaded.history) == len(original.history) > 0
    assert loaded.num_parameters == original.num_parameters


def test_other_data_are_refused(saved, tmp_path):
    _, out, _ = saved
    other = tmp_path / "other.csv"
    write_csv(simulate_default(seed=12, n_days=150), other)
    with pytest.raises(CheckpointError, match="differ"):
        load_fit(out, data=other)
    with pytest.raises(CheckpointError, match="differ"):
        load_fit(out, data=_small(11, days=149))  # same series, one day short


def test_tampered_checkpoint_is_refused(saved, tmp_path):
    _, out, _ = saved
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    payload = torch.load(bad / "model.pt", weights_only=True)
    name = next(iter(payload["params"]))
    payload["params"][name] = torch.zeros(3, 3, 3, dtype=torch.float64)  # wrong shape
    torch.save(payload, bad / "model.pt")
    with pytest.raises(CheckpointError, match="shape"):
        load_fit(bad)
    del payload["params"][name]
    torch.save(payload, bad / "model.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_fit(bad)
    payload["data"]["fingerprint"] = "0" * 64
    torch.save(payload, bad / "model.pt")
    with pytest.raises(CheckpointError, match="differ"):
        load_fit(bad)
    (bad / "model.pt").write_bytes((out / "model.pt").read_bytes()[:200])  # truncated
    with pytest.raises(CheckpointError, match="not a readable"):
        load_fit(bad)
    with pytest.raises(CheckpointError, match="no fit folder"):
        load_fit(tmp_path / "missing")


def test_dataframe_fit_needs_its_data(saved, tmp_path):
    original, out, csv = saved
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    payload = torch.load(moved / "model.pt", weights_only=True)
    payload["data"]["path"] = None  # as written for a fit on a DataFrame
    torch.save(payload, moved / "model.pt")
    with pytest.raises(CheckpointError, match="DataFrame"):
        load_fit(moved)
    loaded = load_fit(moved, data=pd.read_csv(csv))
    pd.testing.assert_frame_equal(loaded.regimes_frame(), original.regimes_frame())


def test_cli_report_rebuilds_plots_and_summary(saved, tmp_path, capsys):
    _, out, _ = saved
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    assert main(["report", str(run)]) == 0
    for name in ("regimes.png", "transitions.png", "usage.png", "training.png", "summary.json"):
        assert (run / name).stat().st_size > 0, name
    assert json.loads((run / "summary.json").read_text())["markets"] == before["markets"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left
    capsys.readouterr()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error:")
