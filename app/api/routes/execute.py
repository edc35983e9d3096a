"""`POST /execute_code` and `POST /lint_code`: sandbox jobs on the `execute` queue."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import OwnerDep, SessionDep
from app.api.schemas import ExecuteRequest, LintRequest
from app.api.submit import job_response, submit_job

router = APIRouter(tags=["execute"])


@router.post("/execute_code", status_code=202)
def execute_code(
    body: ExecuteRequest, request: Request, session: SessionDep, owner: OwnerDep
) -> JSONResponse:
    """Run code in the sandbox; poll the job (or `?wait=`) for its result."""
    job, created = submit_job(
        request, session, kind="execute", owner=owner, body=body.job_request()
    )
    return job_response(session, job, created)


@router.post("/lint_code", status_code=202)
def lint_code(
    body: LintRequest, request: Request, session: SessionDep, owner: OwnerDep
) -> JSONResponse:
    """Lint code (flake8 rule codes for Python, ESLint 9, Checkstyle)."""
    job, created = submit_job(request, session, kind="lint", owner=owner, body=body.job_request())
    return job_response(session, job, created)
