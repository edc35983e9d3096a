"""Execution and lint jobs (queue `execute`). Imports neither torch nor fastapi.

Both are safe to run twice (the sandbox has no side effects), hence `acks_late`.
"""

from __future__ import annotations

from typing import Any

from app.core import names
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.history import record_execution_status
from workers.celery_app import celery_app
from workers.jobrun import JobContext, run_job

_settings = get_settings()


@celery_app.task(
    name=names.TASK_EXECUTE,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=_settings.execute_soft_time_limit_s,
    time_limit=_settings.execute_time_limit_s,
)
def execute(job_id: str) -> None:
    run_job(job_id, run_execution)


@celery_app.task(
    name=names.TASK_LINT,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=_settings.execute_soft_time_limit_s,
    time_limit=_settings.execute_time_limit_s,
)
def lint(job_id: str) -> None:
    run_job(job_id, run_lint)


def run_execution(ctx: JobContext) -> dict[str, Any]:
    from workers.sandbox import service

    result = service.execute(ctx.request, cancel=ctx.cancelled)
    generation_id = ctx.request.get("generation_id")
    if generation_id:
        with session_scope() as session:
            record_execution_status(
                session=session, generation_id=generation_id, status=result["status"]
            )
    return result


def run_lint(ctx: JobContext) -> dict[str, Any]:
    from workers.sandbox import service

    return service.lint(ctx.request)
