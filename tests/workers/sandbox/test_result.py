"""How a backend's observations become SPEC §8's status (no sandbox needed)."""

from __future__ import annotations

import pytest

from workers.sandbox.output import CappedOutput
from workers.sandbox.result import RunOutcome, classify, signal_of, to_result
from workers.sandbox.runtimes import LANGUAGES

PY, TS, JAVA = LANGUAGES["python"], LANGUAGES["typescript"], LANGUAGES["java"]
MARKER = "codeloop-compile-failed-abc"


@pytest.mark.parametrize(
    ("runtime", "outcome", "status"),
    [
        (PY, RunOutcome(exit_code=0), "ok"),
        (PY, RunOutcome(exit_code=2), "runtime_error"),
        (PY, RunOutcome(exit_code=137, timed_out=True), "time_limit_exceeded"),
        (PY, RunOutcome(exit_code=152), "time_limit_exceeded"),  # SIGXCPU: RLIMIT_CPU
        (PY, RunOutcome(exit_code=137, oom_killed=True), "memory_limit_exceeded"),
        (PY, RunOutcome(exit_code=1, stderr=b"...\nMemoryError\n"), "memory_limit_exceeded"),
        (PY, RunOutcome(exit_code=137, output_exceeded=True), "output_limit_exceeded"),
        (PY, RunOutcome(cancelled=True, exit_code=137), "internal_error"),
        (PY, RunOutcome(error="no sandbox"), "internal_error"),
        (PY, RunOutcome(exit_code=1, stderr=b'  File "m.py", line 1\nSyntaxError: x\n'),
         "compilation_error"),
        (PY, RunOutcome(exit_code=1, stderr=b"Traceback (most recent call last):\n"
                                            b"SyntaxError: x\n"), "runtime_error"),
        (TS, RunOutcome(exit_code=1, stderr=f"err\n\n{MARKER}\n".encode()), "compilation_error"),
        (TS, RunOutcome(exit_code=1, stderr=b"codeloop-compile-failed-other\n"), "runtime_error"),
        (JAVA, RunOutcome(exit_code=1, stderr=b"1 error\nerror: compilation failed\n"),
         "compilation_error"),
    ],
)  # fmt: skip
def test_classify(runtime, outcome: RunOutcome, status: str):
    assert classify(runtime, outcome, MARKER) == status


def test_signal_names():
    assert [signal_of(c) for c in (0, 1, 137, 139, 128, 300)] == [
        None, None, "SIGKILL", "SIGSEGV", None, None,
    ]  # fmt: skip


def test_marker_is_removed_and_notes_appended():
    outcome = RunOutcome(exit_code=1, stderr=f"✘ bad\n\n{MARKER}\n".encode())
    result = to_result(TS, outcome, MARKER, "process")
    assert result["stderr"] == "✘ bad\n"
    cancelled = to_result(PY, RunOutcome(cancelled=True, stderr=b"partial"), MARKER, "docker")
    assert cancelled["stderr"] == "partial\n[sandbox] run cancelled\n"


def test_output_cap_counts_both_streams():
    out = CappedOutput(10)
    out.add(1, b"123456")
    out.add(2, b"7890")
    assert not out.exceeded
    out.add(1, b"x")
    assert out.exceeded and out.size == 10 and bytes(out.stdout) == b"123456"
