"""`GET /generations/{id}`: one stored generation, with its context, tool calls,
executions and feedback."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import CallerDep, SessionDep
from app.api.errors import error_responses
from app.core.history import generation_detail

router = APIRouter(prefix="/generations", tags=["memory"])


@router.get(
    "/{generation_id}",
    responses=error_responses(
        401, 404, 422, 429, 503, notes={404: "no such generation (or another workspace's)"}
    ),
)
def get_generation(generation_id: str, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """The task, language, code, text, params and model; the context items the model was
    given; its tool calls; every execution of its code; its ratings."""
    return generation_detail(
        session=session, generation_id=generation_id, workspace=caller.workspace
    )
