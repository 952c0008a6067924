"""Calls side by side in spawned processes (regime_dmm.processes, used by ``select``): results, errors, a process
that dies, and no process left behind."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

import process_calls
from regime_dmm.errors import RegimeDMMError
from regime_dmm.processes import ProcessDied, run_in_processes

import helpers


def test_results_come_back_by_key_and_as_they_arrive():
    seen = []
    calls = [(k, process_calls.square, (k,)) for k in (3, 2)]
    results = run_in_processes(calls, workers=2, on_result=lambda key, value: seen.append((key, value)))
    assert results == {3: 9, 2: 4}
    assert sorted(seen) == [(2, 4), (3, 9)]
    with pytest.raises(ValueError, match="workers"):
        run_in_processes(calls, workers=0)
    # an exception in a call is raised here, as the call raised it, with the child's traceback as its cause; one
    # that pickle cannot rebuild comes back as a RegimeDMMError naming its type
    with pytest.raises(ValueError, match="bad market 'x'") as raised:
        run_in_processes([("a", process_calls.fail_with, ("bad market 'x'",))], workers=1)
    assert "fail_with" in str(raised.value.__cause__)
    with pytest.raises(RegimeDMMError, match="NeedsTwo: no table"):
        run_in_processes([("b", process_calls.fail_with_needs_two, ("no table",))], workers=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_process_that_dies_is_an_error_and_the_others_are_stopped(tmp_path):
    """A process killed without a result (out of memory, SIGKILL) is an error naming its call and exit code at
    once, and the call still running beside it is killed: no wait for a result that never comes."""
    pid_file = tmp_path / "pid"
    calls = [
        ("sleeper", process_calls.sleep_after_writing_pid, (str(pid_file), 300.0)),
        ("K = 5", process_calls.exit_without_result, (3, str(pid_file))),  # dies once the sleeper is under way
    ]
    with pytest.raises(ProcessDied, match=r"K = 5 ended with exit code 3"):
        run_in_processes(calls, workers=2)
    assert not helpers.process_alive(int(pid_file.read_text()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and SIGKILL")
def test_a_killed_parent_leaves_no_process_running(tmp_path):
    """A parent killed outright (SIGKILL, the out-of-memory killer) cannot stop its processes: each one watches its
    parent and ends when it is gone, instead of fitting on for nobody."""
    pid_file = tmp_path / "pid"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import process_calls; "
        "process_calls.run_sleeper_then_wait(sys.argv[2])"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent), str(pid_file)])
    try:
        end = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < end:
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert helpers.process_alive(child)
    finally:
        parent.kill()
        parent.wait()
    end = time.monotonic() + 30
    while helpers.process_alive(child) and time.monotonic() < end:
        time.sleep(0.1)
    assert not helpers.process_alive(child), "the process outlived its killed parent"
