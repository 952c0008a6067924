"""The command line end to end on small data, and its error handling."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from regime_dmm.cli import main

from helpers import FIT_OUTPUTS


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prices.csv"
    rc = main(["simulate", "--out", str(path), "--seed", "2"])
    assert rc == 0
    frame = pd.read_csv(path)
    # keep 300 days per market to stay fast
    frame = frame.groupby("market").head(300)
    frame.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_fit_writes_every_output(small_csv, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["fit", "--data", str(small_csv), "--out", str(out), "--epochs", "30", "--restarts", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Epoch 30/30 | Loss:" in printed and "Ent:" in printed and "Beta:" in printed
    assert "Transition matrix, traditional_cre" in printed
    for name in FIT_OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    regimes = pd.read_csv(out / "regimes.csv")
    assert list(regimes.columns[:3]) == ["date", "market", "regime"]
    prob_cols = [f"prob_{n}" for n in ("calm", "neutral", "volatile", "panic")]
    assert [c for c in regimes.columns if c.startswith("prob_")] == prob_cols
    assert regimes[prob_cols].sum(axis=1).sub(1).abs().max() < 1e-5
    filtered_cols = [f"filtered_{n}" for n in ("calm", "neutral", "volatile", "panic")]
    assert list(regimes.columns[-5:-1]) == filtered_cols  # added after the 0.1 columns
    assert regimes.columns[-1] == "shared_regime"  # added after those (issue #20)
    assert regimes[filtered_cols].sum(axis=1).sub(1).abs().max() < 1e-5
    assert set(regimes["market"]) == {"traditional_cre", "tokenized_reit"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["regimes"] == ["calm", "neutral", "volatile", "panic"]
    for market in ("traditional_cre", "tokenized_reit"):
        entry = summary["markets"][market]
        assert set(entry) >= {"usage", "transition_matrix", "expected_duration", "emission", "current_regime"}
        assert entry["current_regime"] in summary["regimes"]
        rows = entry["transition_matrix"]
        assert all(abs(sum(r) - 1) < 1e-5 for r in rows)
    assert summary["settings"]["training"]["epochs"] == 30 and summary["seed"] == 0
    history = pd.read_csv(out / "history.csv")
    for col in ("loss", "recon", "kl", "entropy", "diversity", "separation", "beta", "tau", "grad_norm"):
        assert col in history.columns
    assert len(history) == 30


def test_classic_and_regimes_flags(small_csv, tmp_path):
    out = tmp_path / "classic"
    assert (
        main(
            [
                "fit",
                "--data",
                str(small_csv),
                "--out",
                str(out),
                "--classic",
                "--regimes",
                "2",
                "--restarts",
                "2",
                "--no-plots",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["regimes"] == ["calm", "volatile"]
    assert summary["settings"]["model"]["classic"] is True


@pytest.mark.parametrize(
    "content,needle",
    [
        ("date,market,prcie\n2020-01-01,a,1\n", "price"),
        ("", "empty"),
        ("date,market,price\nnot-a-date,a,1\n", "not-a-date"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, content, needle):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    out = tmp_path / "never"
    rc = main(["fit", "--data", str(bad), "--out", str(out), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err
    assert not out.exists()


def test_existing_output_folder_is_refused(small_csv, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["fit", "--data", str(small_csv), "--out", str(out), "--quiet"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_config_exits_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  epochz: 3\n")
    assert main(["fit", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "epochs" in capsys.readouterr().err


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "regime_dmm.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "fit" in proc.stdout


@pytest.mark.slow
def test_same_seed_gives_byte_identical_outputs(small_csv, tmp_path):
    args = [
        "fit",
        "--data",
        str(small_csv),
        "--epochs",
        "15",
        "--restarts",
        "2",
        "--quiet",
        "--no-plots",
        "--seed",
        "5",
    ]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    for name in ("regimes.csv", "summary.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.slow
def test_third_party_notices_stay_off_the_terminal_and_own_warnings_do_not(small_csv, tmp_path):
    """Issue 12, item 6: with every Python warning switched on (PYTHONWARNINGS=default) and a fresh
    cache (ArviZ's 1.x migration notice is shown once a day per cache), a fit prints none of the
    libraries' deprecation or migration notices, and still prints its own data warnings."""
    frame = pd.read_csv(small_csv)
    frame.loc[frame.index[40:70], "price"] = frame["price"].iloc[39]  # a frozen feed: 30 repeated prices
    data = tmp_path / "frozen.csv"
    frame.to_csv(data, index=False)
    env = {**os.environ, "PYTHONWARNINGS": "default", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "regime_dmm.cli", "fit", "--data", str(data), "--out", str(tmp_path / "out")]
        + ["--epochs", "3", "--restarts", "1", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    for notice in ("Warning:", "ArviZ is undergoing", "deprecated"):
        assert notice not in printed, printed
    assert "WARNING data:" in printed and "stale_span" in printed


def test_simulate_shocks_option_writes_heavy_tailed_returns_and_refuses_a_bad_law(tmp_path, capsys):
    import numpy as np
    from scipy.stats import kurtosis

    from regime_dmm.data import simulate_default

    path = tmp_path / "t.csv"
    assert main(["simulate", "--out", str(path), "--seed", "3", "--shocks", "studentt:4"]) == 0
    frame = pd.read_csv(path)
    expected = simulate_default(seed=3, shocks="studentt:4").frame
    np.testing.assert_allclose(frame["price"].to_numpy(), expected["price"].to_numpy(), rtol=1e-12)
    gaussian = simulate_default(seed=3).frame
    assert not np.allclose(frame["price"].to_numpy(), gaussian["price"].to_numpy())
    cre = np.diff(np.log(frame.loc[frame["market"] == "traditional_cre", "price"].to_numpy()))
    truth = simulate_default(seed=3, shocks="studentt:4").true_regimes["traditional_cre"]
    calm = cre[truth == 0] / cre[truth == 0].std()
    assert kurtosis(calm) > 1.0  # a Gaussian's excess kurtosis is 0

    bad = tmp_path / "bad.csv"
    assert main(["simulate", "--out", str(bad), "--shocks", "studentt:2"]) == 2
    assert "shocks" in capsys.readouterr().err
    assert not bad.exists()


@pytest.mark.parametrize("command", ["fit", "select", "walkforward", "sweep"])
def test_out_naming_a_file_exits_2_before_any_work(tmp_path, capsys, command):
    """Issue #21: ``--out`` that is an existing file is a clear error (exit 2, no traceback), the file untouched."""
    target = tmp_path / "existing_file.txt"
    target.write_text("keep me\n")
    assert main([command, "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"--out {target} is a file, not a folder" in err and "Traceback" not in err
    assert target.read_text() == "keep me\n"
