"""`POST /feedback`: rate a generation; its running score is updated in the same transaction."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import CallerDep, SessionDep
from app.api.errors import error_responses
from app.api.schemas import StrictBody
from app.core.feedback import MAX_COMMENT_CHARS, record_feedback

router = APIRouter(tags=["memory"])


class FeedbackRequest(StrictBody):
    generation_id: str = Field(min_length=1, max_length=36)
    score: float = Field(ge=0.0, le=1.0, allow_inf_nan=False, description="0 worst … 1 best")
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS)


class FeedbackResult(BaseModel):
    generation_id: str
    feedback_score: float
    feedback_count: int


@router.post(
    "/feedback",
    status_code=201,
    response_model=FeedbackResult,
    responses=error_responses(400, 401, 404, 413, 422, 429, 503),
)
def post_feedback(body: FeedbackRequest, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """Rate a generation of the workspace (one rating per key: a new one replaces the
    old); better-rated generations rank higher in later retrievals."""
    result = record_feedback(
        session=session,
        generation_id=body.generation_id,
        score=body.score,
        comment=body.comment,
        owner=caller.owner,
        workspace=caller.workspace,
    )
    session.commit()  # committed before the client hears 201
    return result.to_json()
