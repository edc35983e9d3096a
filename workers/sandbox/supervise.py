"""Watch one running sandboxed process: feed stdin, collect capped output, enforce the
wall clock and cancellation, and kill the run's whole cgroup on any limit.

Output is read as it comes (never buffered past the cap), and after the main process
exits whatever the run left behind is killed through its cgroup, so a daemon that
double-forks and keeps the pipes open cannot hold the worker hostage.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import threading
import time
from typing import IO

from workers.sandbox.backend import SandboxRun
from workers.sandbox.cgroups import RunCgroup
from workers.sandbox.output import CappedOutput
from workers.sandbox.result import RunOutcome


def supervise(
    proc: subprocess.Popen[bytes],
    run: SandboxRun,
    started: float,
    cancel: threading.Event | None,
    cgroup: RunCgroup,
) -> RunOutcome:
    """Feed stdin, collect capped output, enforce the wall clock; kill on any limit."""
    assert proc.stdin and proc.stdout and proc.stderr
    outcome = RunOutcome()
    output = CappedOutput(run.limits.output_bytes)
    deadline = started + run.limits.timeout_s
    writer = threading.Thread(target=_feed, args=(proc.stdin, run.stdin), daemon=True)
    writer.start()
    reason = None
    try:
        reason = _pump(proc, output, deadline, cancel)
        if reason is None:
            reason = _wait(proc, deadline, cancel)
    finally:
        cgroup.kill()  # whatever the run left behind, and the run itself on a limit
        proc.wait()
        duration = time.monotonic() - started
        _drain(proc, output)
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        writer.join(timeout=1)
    rc = proc.returncode
    outcome.exit_code = 128 - rc if rc < 0 else rc
    outcome.stdout, outcome.stderr = bytes(output.stdout), bytes(output.stderr)
    outcome.duration_ms = round(duration * 1000)
    outcome.timed_out = reason == "timeout"
    outcome.cancelled = reason == "cancel"
    outcome.output_exceeded = output.exceeded
    outcome.oom_killed = cgroup.oom_kills() > 0
    return outcome


def _feed(stream: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(OSError):  # the program may exit without reading it all
        if data:
            stream.write(data)
    with contextlib.suppress(OSError):
        stream.close()


def _pump(
    proc: subprocess.Popen[bytes],
    output: CappedOutput,
    deadline: float,
    cancel: threading.Event | None,
) -> str | None:
    """Read stdout/stderr until both close; returns why it stopped early, if it did."""
    assert proc.stdout and proc.stderr
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, 1)
    sel.register(proc.stderr, selectors.EVENT_READ, 2)
    with sel:
        while sel.get_map():
            if cancel is not None and cancel.is_set():
                return "cancel"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            for key, _ in sel.select(min(remaining, 0.05)):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                output.add(key.data, data)
                if output.exceeded:
                    return "output"
    return None


def _wait(
    proc: subprocess.Popen[bytes], deadline: float, cancel: threading.Event | None
) -> str | None:
    """The program closed its output; wait for it to exit."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        try:
            proc.wait(timeout=min(remaining, 0.05))
            return None
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                return "cancel"


def _drain(proc: subprocess.Popen[bytes], output: CappedOutput) -> None:
    """Pick up what the run wrote just before it ended (everything is dead now)."""
    for stream, number in ((proc.stdout, 1), (proc.stderr, 2)):
        assert stream is not None
        os.set_blocking(stream.fileno(), False)
        with contextlib.suppress(OSError):
            while not output.exceeded and (data := os.read(stream.fileno(), 65536)):
                output.add(number, data)
