"""`POST /jobs/{id}/events-token`: a short-lived token for that job's events route.

For `EventSource`, which cannot send `Authorization`: the page asks for a token with
its key (in a header), then opens `/jobs/{id}/events?token=…`. See app/core/events_token.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.api.deps import OwnerDep, SessionDep, events_token_secret
from app.api.errors import error_responses
from app.core import jobs
from app.core.config import get_settings
from app.core.events_token import issue_events_token

router = APIRouter(prefix="/jobs", tags=["jobs"])


class EventsToken(BaseModel):
    token: str
    expires_in: int


@router.post(
    "/{job_id}/events-token",
    response_model=EventsToken,
    responses=error_responses(401, 404, 422, 429, 503),
)
def create_events_token(
    job_id: str, request: Request, session: SessionDep, owner: OwnerDep
) -> dict[str, object]:
    """A token that opens `GET /jobs/{job_id}/events?token=` (that job only) for minutes."""
    jobs.get_owned_job(session, job_id, owner)
    ttl_s = get_settings().events_token_ttl_s
    token = issue_events_token(
        events_token_secret(request), job_id=job_id, owner=owner, ttl_s=ttl_s
    )
    return {"token": token, "expires_in": ttl_s}
