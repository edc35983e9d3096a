"""Execution and lint jobs (queue `execute`). Imports neither torch nor fastapi."""

from __future__ import annotations

from typing import Any

from app.core import names
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.history import record_execution_status
from workers.jobrun import JobContext, job_task


def run_execution(ctx: JobContext) -> dict[str, Any]:
    from workers.sandbox import service

    result = service.execute(ctx.request, cancel=ctx.cancelled)
    generation_id = ctx.request.get("generation_id")
    if generation_id:
        with session_scope() as session:
            record_execution_status(
                session=session, generation_id=generation_id, status=result["status"],
                workspace=ctx.workspace,
            )  # fmt: skip
    return result


def run_lint(ctx: JobContext) -> dict[str, Any]:
    from workers.sandbox import service

    return service.lint(ctx.request)


_settings = get_settings()
_limits = {
    "soft_time_limit": _settings.execute_soft_time_limit_s,
    "time_limit": _settings.execute_time_limit_s,
}
execute = job_task(names.TASK_EXECUTE, run_execution, **_limits)
lint = job_task(names.TASK_LINT, run_lint, **_limits)
