"""`codeloop up`'s supervisor: real child processes that crash are started again."""

from __future__ import annotations

import os
import signal
import sys
import time

from app.embedded import Supervisor
from tests.conftest import wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def test_a_killed_child_is_restarted_after_its_backoff_and_logged(tmp_path, capfd):
    """The bug: `codeloop up` stopped everything when one child died (a crashed worker
    or beat, the embedded Redis) instead of restarting it."""
    sup = Supervisor(tmp_path, backoff_s=0.3)
    sup.start("sleeper", SLEEPER, dict(os.environ))
    try:
        first = sup.children[0].proc
        os.kill(first.pid, signal.SIGKILL)
        first.wait(5)
        killed_at = time.monotonic()
        wait_until(lambda: sup.tend() is None and sup.children[0].proc is not first, 10,
                   what="a restart")  # fmt: skip
        assert time.monotonic() - killed_at >= 0.3  # it waited out the backoff
        assert sup.children[0].proc.poll() is None
        assert sup.children[0].backoff_s == 0.6  # the next crash waits twice as long
    finally:
        sup.stop()
    assert all(proc.poll() is not None for _name, proc in sup.procs)
    err = capfd.readouterr().err
    assert "sleeper exited with -9; restarting in 0.3s" in err
    assert "sleeper restarted (pid" in err


def test_a_child_that_keeps_crashing_makes_the_supervisor_give_up(tmp_path, capfd):
    sup = Supervisor(tmp_path, backoff_s=0.01, max_backoff_s=0.04, max_restarts=3)
    sup.start("crasher", CRASHER, dict(os.environ))
    try:
        problem = wait_until(sup.tend, 20, interval=0.01, what="the supervisor to give up")
    finally:
        sup.stop()
    assert "crasher exited with 3 after 3 restarts" in problem and "giving up" in problem
    assert sup.children[0].backoff_s == 0.04  # 0.01, doubled per restart, capped
    assert capfd.readouterr().err.count("crasher restarted") == 3
