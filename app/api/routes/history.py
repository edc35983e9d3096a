"""`GET /history/best/{language}`: the best-rated generations of a language."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app.api.deps import OwnerDep, SessionDep
from app.core.history import best_history, generation_to_json

router = APIRouter(prefix="/history", tags=["memory"])


@router.get("/best/{language}")
def get_best_history(
    language: str,
    session: SessionDep,
    _owner: OwnerDep,
    limit: int = Query(default=10, ge=1, le=100),
) -> dict[str, Any]:
    """Highest-rated first; ties by usage, then the newest (unrated ones at the neutral prior)."""
    rows = best_history(session=session, language=language, limit=limit)
    return {"language": language, "items": [generation_to_json(row) for row in rows]}
