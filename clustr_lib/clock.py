"""The clock that times what a record calls its wall time: :func:`seconds` is
:func:`time.perf_counter` less the time the process was suspended.

A long recording (``python -m clustr_lib record``) may be suspended — Ctrl-Z in its
terminal, or ``kill -TSTP <pid>`` to free the machine for a while — and resumed with
``fg`` / ``kill -CONT <pid>``. With :func:`count_suspensions` in force (the recorder turns it
on), SIGTSTP is caught: the time until the process is continued is added to a counter that
:func:`seconds` subtracts, so that the records' ``wall_seconds`` (and the study costs read
off them) stay the time the work took. A plain SIGSTOP cannot be caught: its pause is
counted as work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

_suspended = 0.0  # seconds spent suspended by SIGTSTP since the process started


def seconds() -> float:
    """A monotonic clock, in seconds, that does not advance while the process is suspended
    by a SIGTSTP caught under :func:`count_suspensions` (differences of it are wall times)."""
    return time.perf_counter() - _suspended


def suspended_seconds() -> float:
    """How long the process has been suspended by caught SIGTSTPs so far."""
    return _suspended


def _suspend(signum, frame) -> None:
    """SIGTSTP: stop the process (with SIGSTOP, which stops it even where the default action
    would not, e.g. in an orphaned process group), and count the time until it is continued."""
    global _suspended
    start = time.perf_counter()
    previous = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
    try:
        os.kill(os.getpid(), signal.SIGSTOP)  # returns once a SIGCONT has arrived
    finally:
        signal.signal(signal.SIGTSTP, previous)
        _suspended += time.perf_counter() - start


@contextlib.contextmanager
def count_suspensions():
    """Within the block, catch SIGTSTP so that suspended time is not counted by
    :func:`seconds`. A no-op off the main thread, where there is no SIGTSTP, and where it is
    ignored. (A SIGTSTP that arrives just as the block ends may be dropped by Python.)"""
    if (
        not hasattr(signal, "SIGTSTP")
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTSTP) == signal.SIG_IGN
    ):
        yield
        return
    previous = signal.signal(signal.SIGTSTP, _suspend)
    try:
        yield
    finally:
        signal.signal(signal.SIGTSTP, previous)
