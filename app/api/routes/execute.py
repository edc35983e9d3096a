"""`POST /execute_code` and `POST /lint_code`: sandbox jobs on the `execute` queue."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import CallerDep, SessionDep
from app.api.schemas import ExecuteRequest, LintRequest
from app.api.submit import JOB_POST_RESPONSES, job_response, submit_job

router = APIRouter(tags=["execute"])


@router.post("/execute_code", status_code=202, responses=JOB_POST_RESPONSES)
def execute_code(
    body: ExecuteRequest, request: Request, session: SessionDep, caller: CallerDep
) -> JSONResponse:
    """Run code in the sandbox; poll the job (or `?wait=`) for its result."""
    job, created = submit_job(
        request, session, kind="execute", owner=caller.owner, workspace=caller.workspace,
        body=body.job_request(),
    )  # fmt: skip
    return job_response(session, job, created)


@router.post("/lint_code", status_code=202, responses=JOB_POST_RESPONSES)
def lint_code(
    body: LintRequest, request: Request, session: SessionDep, caller: CallerDep
) -> JSONResponse:
    """Lint code (flake8 rule codes for Python, ESLint 9, Checkstyle)."""
    job, created = submit_job(
        request, session, kind="lint", owner=caller.owner, workspace=caller.workspace,
        body=body.job_request(),
    )  # fmt: skip
    return job_response(session, job, created)
