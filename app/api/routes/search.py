"""`POST /search_code`: a retrieval job on its own queue (never behind a generation)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import OwnerDep, SessionDep
from app.api.schemas import SearchRequest
from app.api.submit import job_response, submit_job

router = APIRouter(tags=["memory"])


@router.post("/search_code", status_code=202)
def search_code(
    body: SearchRequest, request: Request, session: SessionDep, owner: OwnerDep
) -> JSONResponse:
    """Rank past generations and knowledge by similarity, feedback and usage."""
    job, created = submit_job(request, session, kind="search", owner=owner, body=body.job_request())
    return job_response(session, job, created)
