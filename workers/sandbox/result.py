"""What a backend observed (`RunOutcome`) and the result SPEC §8 promises (`to_result`).

Both backends see a killed program only as an exit status above 128 (bubblewrap and
Docker both report 128 + signal), so `signal` is derived from it the way shells do.
A cancelled run is reported as `internal_error` with a note on stderr: SPEC §8 has no
status for it, and the job itself ends as `cancelled` anyway.
"""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass, field
from typing import Any

from workers.sandbox.runtimes import Runtime, strip_marker


@dataclass
class RunOutcome:
    exit_code: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    duration_ms: int = 0
    timed_out: bool = False  # the wall clock ran out and the run was killed
    oom_killed: bool = False  # the kernel's OOM killer hit the run's cgroup
    output_exceeded: bool = False
    cancelled: bool = False
    error: str | None = None  # the sandbox itself failed; the program may not have run
    notes: list[str] = field(default_factory=list)


def signal_of(exit_code: int | None) -> str | None:
    if exit_code is None or not 128 < exit_code < 128 + 65:
        return None
    try:
        return signals.Signals(exit_code - 128).name
    except ValueError:
        return None


def classify(runtime: Runtime, outcome: RunOutcome, marker: str) -> str:
    if outcome.error is not None or outcome.cancelled:
        return "internal_error"
    if outcome.output_exceeded:
        return "output_limit_exceeded"
    sig = signal_of(outcome.exit_code)
    if outcome.timed_out or sig == "SIGXCPU":
        return "time_limit_exceeded"
    if outcome.exit_code == 0:
        return "ok"
    if outcome.oom_killed or runtime.heap_exhausted(outcome.stderr):
        return "memory_limit_exceeded"
    if runtime.compile_failed(outcome.exit_code, outcome.stderr, marker):
        return "compilation_error"
    return "runtime_error"


def to_result(runtime: Runtime, outcome: RunOutcome, marker: str, backend: str) -> dict[str, Any]:
    status = classify(runtime, outcome, marker)
    stderr = strip_marker(outcome.stderr, marker)
    notes = list(outcome.notes)
    if outcome.cancelled:
        notes.append("run cancelled")
    if outcome.error:
        notes.append(outcome.error)
    if notes:
        if stderr and not stderr.endswith(b"\n"):
            stderr += b"\n"
        stderr += "".join(f"[sandbox] {n}\n" for n in notes).encode()
    return {
        "status": status,
        "exit_code": outcome.exit_code,
        "signal": signal_of(outcome.exit_code),
        "stdout": outcome.stdout.decode("utf-8", "replace"),
        "stderr": stderr.decode("utf-8", "replace"),
        "truncated": outcome.output_exceeded,
        "duration_ms": outcome.duration_ms,
        "backend": backend,
        "lint": None,
    }
