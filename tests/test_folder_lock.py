"""One run per sweep / walk-forward folder: a second run into a folder another process holds stops at once with a
clear error (exit 2) and changes nothing; the lock goes with the process that held it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from regime_dmm.atomic import LOCK_FILE, folder_lock
from regime_dmm.cli import main
from regime_dmm.errors import RegimeDMMError

from helpers import two_regime_market, write_csv_frame

pytestmark = pytest.mark.usefixtures("one_thread")


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder`` (as a running sweep or walk-forward does) until its stdin closes."""
    code = textwrap.dedent(
        f"""
        import sys
        from regime_dmm.atomic import folder_lock
        with folder_lock({str(folder)!r}, "sweep"):
            print("held", flush=True)
            sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_into_a_held_folder_stops_and_changes_nothing(tmp_path, capsys):
    frame = two_regime_market(200, seed=4)
    write_csv_frame(frame, tmp_path / "prices.csv")
    walk = [
        "walkforward", "--data", str(tmp_path / "prices.csv"), "--classic", "--regimes", "2", "--restarts", "1",
        "--refit-every", "60", "--start", "2020-06-01", "--quiet",
    ]  # fmt: skip
    held = tmp_path / "wf"
    assert main([*walk, "--out", str(held)]) == 0  # a finished run, to be resumed
    before = _files(held)
    proc = _holder(held)
    try:
        capsys.readouterr()
        assert main([*walk, "--out", str(held)]) == 2
        err = capsys.readouterr().err
        assert "another regime-dmm run is writing into" in err and str(held) in err and "Traceback" not in err
        assert _files(held) == before
        sweep_out = tmp_path / "sweep"
        sweep_out.mkdir()
        (sweep_out / LOCK_FILE).touch()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)
        proc = _holder(sweep_out)
        assert main(["sweep", "--data", str(tmp_path / "prices.csv"), "--out", str(sweep_out), "--quiet"]) == 2
        assert "another regime-dmm run is writing into" in capsys.readouterr().err
        assert [p.name for p in sweep_out.iterdir()] == [LOCK_FILE]
    finally:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(timeout=30)
    # the holder is gone: its lock went with it, and the walk-forward resumes (every refit kept)
    assert main([*walk, "--out", str(held)]) == 0
    assert _files(held) == before


def test_a_folder_the_lock_created_is_removed_when_nothing_was_written(tmp_path):
    target = tmp_path / "new"
    with pytest.raises(ValueError):
        with folder_lock(target, "walk-forward"):
            raise ValueError("a failed start")
    assert not target.exists()
    with folder_lock(target, "walk-forward"):
        (target / "kept.csv").write_text("x\n")
        with pytest.raises(RegimeDMMError, match="another regime-dmm run"):  # the same folder, twice
            with folder_lock(target, "sweep"):
                pass
    assert (target / "kept.csv").is_file()
