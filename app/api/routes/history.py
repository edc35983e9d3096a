"""`GET /history/best/{language}`: the best-rated generations of a language."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app.api.deps import CallerDep, SessionDep
from app.api.errors import error_responses
from app.api.schemas import Language
from app.core.history import best_history, generation_to_json

router = APIRouter(
    prefix="/history", tags=["memory"], responses=error_responses(401, 422, 429, 503)
)


@router.get("/best/{language}")
def get_best_history(
    language: Language,
    session: SessionDep,
    caller: CallerDep,
    limit: int = Query(default=10, ge=1, le=100),
) -> dict[str, Any]:
    """The workspace's generations, highest-rated first; ties by usage, then the newest
    (unrated ones at the neutral prior)."""
    rows = best_history(session=session, language=language, limit=limit, workspace=caller.workspace)
    return {"language": language, "items": [generation_to_json(row) for row in rows]}
