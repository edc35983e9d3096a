"""`POST /search_code`: a retrieval job on its own queue (never behind a generation)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import CallerDep, SessionDep
from app.api.schemas import SearchRequest
from app.api.submit import JOB_POST_RESPONSES, job_response, submit_job

router = APIRouter(tags=["memory"])


@router.post("/search_code", status_code=202, responses=JOB_POST_RESPONSES)
def search_code(
    body: SearchRequest, request: Request, session: SessionDep, caller: CallerDep
) -> JSONResponse:
    """Rank the workspace's past generations and knowledge (and the global snippets) by
    similarity, feedback and usage."""
    job, created = submit_job(
        request, session, kind="search", owner=caller.owner, workspace=caller.workspace,
        body=body.job_request(),
    )  # fmt: skip
    return job_response(session, job, created)
