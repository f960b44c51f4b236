"""The records' clock: time a process spends suspended by SIGTSTP is not counted as work."""

import os
import signal
import subprocess
import sys
import time

import pytest

from clustr_lib import clock

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTSTP"), reason="needs POSIX signals")

CHILD = """
import time
from clustr_lib import clock
with clock.count_suspensions():
    wall, counted = time.perf_counter(), clock.seconds()
    print("ready", flush=True)
    while time.perf_counter() - wall < 3.0:  # 3 s of wall time, part of it suspended
        time.sleep(0.01)
    print(time.perf_counter() - wall, clock.seconds() - counted, clock.suspended_seconds())
"""


def state(pid: int) -> str:
    """The process's state letter in /proc (``T``: stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_time_suspended_by_sigtstp_is_not_counted():
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    child.send_signal(signal.SIGTSTP)
    stopped_at = time.perf_counter()
    time.sleep(0.5)
    assert state(child.pid) == "T"  # the handler stopped it, as the default action would
    time.sleep(1.0)
    child.send_signal(signal.SIGCONT)
    paused = time.perf_counter() - stopped_at  # measured here, by the parent's own clock
    wall, counted, suspended = map(float, child.communicate(timeout=30)[0].split())
    assert child.returncode == 0
    assert wall >= 3.0
    assert suspended == pytest.approx(paused, abs=0.25)
    assert counted < wall - 1.2


def test_the_handler_is_in_force_only_within_the_block_and_survives_nesting():
    before = signal.getsignal(signal.SIGTSTP)
    with clock.count_suspensions():
        handler = signal.getsignal(signal.SIGTSTP)
        assert handler not in (before, signal.SIG_DFL, signal.SIG_IGN)
        with clock.count_suspensions():  # e.g. a task executed within a recording
            assert signal.getsignal(signal.SIGTSTP) is handler
        assert signal.getsignal(signal.SIGTSTP) is handler
    assert signal.getsignal(signal.SIGTSTP) == before


def test_an_ignored_sigtstp_stays_ignored():
    before = signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    try:
        with clock.count_suspensions():
            assert signal.getsignal(signal.SIGTSTP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTSTP, before)
