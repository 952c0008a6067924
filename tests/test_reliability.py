"""Faults during training, checkpoints, resume, safe loading, atomic outputs."""

import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import regime_dmm as rd
import regime_dmm.training.variants as variants
from regime_dmm.cli import main
from regime_dmm.errors import CheckpointError, TrainingError
from regime_dmm.fitting import load_resume_state, resume_fit
from regime_dmm.persistence import MODEL_FORMAT, load_checkpoint

from helpers import stop_after


@pytest.fixture(scope="module")
def frame():
    return rd.simulate_default(4, n_days=250).frame


def small_config(**training):
    base = {"epochs": 24, "restarts": 2, "seed": 3}
    base.update(training)
    return rd.FitConfig().replace(training=base)


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(frame, tmp_path):
    cfg = small_config()
    straight = rd.fit(frame, cfg)
    stop_after_30 = stop_after(30)  # restart 1, epoch 6: one restart done, one in progress
    ckpt = tmp_path / "run.pt"
    with pytest.raises(rd.FitInterrupted):
        rd.fit(frame, cfg, checkpoint=ckpt, checkpoint_every=5, stop_requested=stop_after_30)
    state = load_resume_state(ckpt)
    assert [e.restart for e in state.run.completed] == [0]
    assert state.run.current.restart == 1 and state.run.current.loop.epoch == 6
    resumed = resume_fit(ckpt, data=frame)
    pd.testing.assert_frame_equal(straight.regimes_frame(), resumed.regimes_frame())
    assert straight.summary() == resumed.summary() | {"data": straight.summary()["data"]}
    pd.testing.assert_frame_equal(straight.history, resumed.history)


def test_resume_refuses_other_data(frame, tmp_path):
    ckpt = tmp_path / "run.pt"
    with pytest.raises(rd.FitInterrupted):
        rd.fit(frame, small_config(restarts=1), checkpoint=ckpt, stop_requested=lambda: True)
    other = rd.simulate_default(5, n_days=250).frame
    with pytest.raises(CheckpointError, match="data differ"):
        resume_fit(ckpt, data=other)


def test_non_finite_gradients_are_skipped_and_logged(frame, monkeypatch):
    from regime_dmm.models.exact_dmm import ExactRegimeDMM

    original = ExactRegimeDMM.log_potentials
    calls = {"n": 0}

    def poisoned(self, data):
        pot = original(self, data)
        calls["n"] += 1
        if calls["n"] in (5, 6):  # two training steps produce NaN emissions
            pot = pot._replace(obs_ll=pot.obs_ll * torch.tensor(float("nan")))
        return pot

    monkeypatch.setattr(ExactRegimeDMM, "log_potentials", poisoned)
    # Adam's faults (the learning rate halved); L-BFGS's: tests/test_lbfgs_refinement.py
    result = rd.fit(frame, small_config(restarts=1, epochs=12, optimizer="adam"))
    assert len(result.faults) == 2
    assert {f["non_finite"] for f in result.faults} == {"loss (markets 'traditional_cre', 'tokenized_reit')"}
    assert all("lr ->" in f["action"] for f in result.faults)
    assert np.isfinite(result.log_likelihood)
    for m in result.markets:
        assert np.allclose(m.smoothed.sum(-1), 1.0)
    assert result.history["lr"].iloc[-1] == pytest.approx(1e-3 / 4)


@pytest.mark.parametrize(
    "optimizer,advice", [("adam", "lower training.lr"), ("lbfgs", "train with training.optimizer: adam")]
)
def test_repeated_faults_stop_with_a_clear_error(frame, monkeypatch, optimizer, advice):
    from regime_dmm.models.exact_dmm import ExactRegimeDMM

    original = ExactRegimeDMM.log_potentials

    def always_nan(self, data):
        pot = original(self, data)
        return pot._replace(obs_ll=pot.obs_ll * torch.tensor(float("nan")))

    monkeypatch.setattr(ExactRegimeDMM, "log_potentials", always_nan)
    config = small_config(restarts=1, epochs=12, optimizer=optimizer, anneal_epochs=2)
    with pytest.raises(TrainingError, match=f"5 consecutive non-finite.*{advice}"):
        rd.fit(frame, config)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_a_training_error_names_the_market_at_fault(frame, monkeypatch, optimizer):
    """Only the second market's days are poisoned: the error names it, not the other."""
    from regime_dmm.models.exact_dmm import ExactRegimeDMM

    original = ExactRegimeDMM.log_potentials

    def second_nan(self, data):
        pot = original(self, data)
        poison = torch.ones_like(pot.obs_ll)
        poison[1] = float("nan")
        return pot._replace(obs_ll=pot.obs_ll * poison)

    monkeypatch.setattr(ExactRegimeDMM, "log_potentials", second_nan)
    config = small_config(restarts=1, epochs=12, optimizer=optimizer, anneal_epochs=2)
    with pytest.raises(TrainingError, match="market 'tokenized_reit'") as caught:
        rd.fit(frame, config)
    assert "traditional_cre" not in str(caught.value)


def test_a_failing_restart_is_reported_and_skipped(frame, monkeypatch):
    real = variants.train_svi

    def flaky(*args, **kwargs):
        if kwargs["restart"] == 1:
            raise TrainingError("restart 1: injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(variants, "train_svi", flaky)
    result = rd.fit(frame, small_config(restarts=3))
    status = {r["restart"]: r["status"] for r in result.restarts}
    assert status == {0: "ok", 1: "failed", 2: "ok"}
    assert "injected" in result.restarts[1]["reason"]


@pytest.mark.slow
def test_cli_failure_leaves_only_the_last_checkpoint(frame, tmp_path, monkeypatch, capsys):
    data = tmp_path / "prices.csv"
    frame.to_csv(data, index=False)
    real = variants.train_svi

    def dies_late(*args, **kwargs):
        if kwargs["restart"] == 1:
            raise TrainingError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(variants, "train_svi", dies_late)
    out = tmp_path / "out"
    rc = main(
        ["fit", "--data", str(data), "--out", str(out), "--epochs", "10", "--restarts", "2", "--quiet", "--no-plots"]
    )
    assert rc == 0  # restart 0 succeeded
    assert not (out / "checkpoint.pt").exists() and (out / "regimes.csv").exists()
    monkeypatch.setattr(variants, "train_svi", lambda *a, **k: (_ for _ in ()).throw(TrainingError("boom")))
    out2 = tmp_path / "out2"
    rc = main(["fit", "--data", str(data), "--out", str(out2), "--epochs", "10", "--restarts", "2", "--quiet"])
    assert rc == 2 and "every restart failed" in capsys.readouterr().err
    assert sorted(p.name for p in out2.iterdir()) == ["checkpoint.pt"]  # no half-written output


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/regime_dmm_pwned",))


@pytest.mark.parametrize("kind", ["pickle", "truncated", "garbage", "foreign", "version"])
def test_bad_checkpoints_give_clear_errors(tmp_path, kind):
    path = tmp_path / "model.pt"
    good = {"format": MODEL_FORMAT, "package_version": rd.__version__, "params": {}}
    if kind == "pickle":
        path.write_bytes(pickle.dumps(Evil()))
    elif kind == "truncated":
        torch.save(good | {"params": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    else:
        torch.save(good | {"package_version": "0.0.1"}, path)
    if os.path.exists("/tmp/regime_dmm_pwned"):
        os.remove("/tmp/regime_dmm_pwned")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_resume_state(path)
    assert not os.path.exists("/tmp/regime_dmm_pwned")


def test_cli_resume_with_bad_checkpoint_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(pickle.dumps(Evil()))
    assert main(["fit", "--resume", str(run)]) == 2
    assert "not a readable regime-dmm checkpoint" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_prints_resume_command(frame, tmp_path, sig, code):
    data = tmp_path / "prices.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "regime_dmm.cli",
            "fit",
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "100000",
            "--restarts",
            "1",
            "--checkpoint-every",
            "1",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    while not (out / "checkpoint.pt").exists():  # training is running once the first checkpoint is there
        assert proc.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"regime-dmm fit --resume {out}" in err
    state = load_resume_state(out / "checkpoint.pt")
    assert state.run.current.loop.epoch >= 1


def cpu_seconds_until_exit(proc: subprocess.Popen, timeout: float = 60.0) -> float:
    """The CPU time (user + system) ``proc`` spends from now until it exits, read from ``/proc/PID/stat``: the exited
    process stays a zombie with its final times until ``proc`` is waited for, which this does not do."""
    path = f"/proc/{proc.pid}/stat"
    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> tuple[str, float]:
        with open(path, encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # after the command name: state, ppid, ...
        return fields[0], (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)

    state, start = read()
    now, deadline = start, time.time() + timeout
    while state != "Z":
        assert time.time() < deadline, "the process did not stop"
        time.sleep(0.01)
        state, now = read()
    return now - start


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals; CPU times from /proc")
@pytest.mark.parametrize(
    "extra,sig,phase",
    [
        ([], signal.SIGTERM, "warm-starting restart 0"),  # the maximum-likelihood warm start (L-BFGS, EM)
        (["--classic"], signal.SIGINT, "training restart 0"),  # classic mode: L-BFGS and EM, no SVI epoch
    ],
)
def test_signal_outside_svi_epochs_stops_within_two_seconds(tmp_path, extra, sig, phase):
    data = tmp_path / "prices.csv"
    rd.simulate_default(6, n_days=4000).frame.to_csv(data, index=False)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "regime_dmm.cli", "fit", "--data", str(data), "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # the data are loaded once the data line is printed
        if line.startswith("data:"):
            break
    time.sleep(1.0)
    assert proc.poll() is None, "the fit ended before the signal"
    sent = time.perf_counter()
    proc.send_signal(sig)
    work = cpu_seconds_until_exit(proc)
    _, err = proc.communicate(timeout=60)
    waited = time.perf_counter() - sent
    assert proc.returncode == 128 + int(sig), err
    # The promise (README): stopped within two seconds. On a busy machine the wall clock stretches by the other
    # jobs' share of the cores (0.4.0's bound failed at 2.7 s and 6.4 s there), so the bound is on the work the
    # process did after the signal (its own CPU time), and the wall clock only guards against a hang.
    assert work < 2.0, f"{work:.2f} CPU seconds of work after the signal"
    assert waited < 60.0, f"stopped {waited:.2f} s after the signal"
    assert f"stopped while {phase}" in err, err
    assert "Traceback" not in err
    assert not (out / "regimes.csv").exists()
