"""Verification: run an answer with the request's tests in the sandbox.

For Python and JavaScript/TypeScript (javascript, typescript, vite, nestjs) the tests
are assertions appended to the code: one program, so the tests see the code's names,
and a failing assertion is a non-zero exit. For java, react and tailwind the code is
compiled and run on its own (a compile error or a crash is a failure); their `tests`
are not appended, since a second top-level program does not compose with the first.

Passed means the sandbox said `ok` (exit code 0 within every limit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.agent.calls import CallRecord, ToolRunner, cap_output
from workers.agent.tools import ToolContext, execution_request, run_execution

APPENDS_TESTS = frozenset({"python", "javascript", "typescript", "vite", "nestjs"})
KEPT_OUTPUT_CHARS = 4000


@dataclass(frozen=True)
class Verification:
    passed: bool
    execution: dict[str, Any] | None  # the execute result (stdout/stderr capped); None: not run
    record: CallRecord | None

    @property
    def status(self) -> str:
        if self.execution is None:
            return "not_run"
        return "passed" if self.passed else "failed"


def test_program(language: str, code: str, tests: str) -> str:
    if language in APPENDS_TESTS:
        return f"{code.rstrip()}\n\n{tests.strip()}\n"
    return code


def verify(
    runner: ToolRunner, language: str, code: str, tests: str, *, generation_id: str | None
) -> Verification:
    """Run `code` + `tests` through the execute queue as an agent tool call."""
    if not code.strip():
        return Verification(False, None, None)
    program = test_program(language, code, tests)
    request = execution_request(language, program, generation_id=generation_id)

    def run(ctx: ToolContext) -> dict[str, Any]:
        return run_execution(ctx, request)

    record = runner.agent_call("execute_code", {"language": language, "code": program}, run)
    raw = record.raw if record.ok else None
    if raw is None:  # the sandbox job itself failed, timed out or was cancelled
        error = str(record.output.get("error", ""))
        failed = {"status": "internal_error", "exit_code": None, "stdout": "", "stderr": error}
        return Verification(False, failed, record)
    execution = {
        **raw,
        "stdout": cap_output(str(raw.get("stdout") or ""), KEPT_OUTPUT_CHARS),
        "stderr": cap_output(str(raw.get("stderr") or ""), KEPT_OUTPUT_CHARS),
    }
    return Verification(raw.get("status") == "ok", execution, record)
