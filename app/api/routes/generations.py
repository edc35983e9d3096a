"""`GET /generations/{id}`: one stored generation, with its context, tool calls,
executions and feedback."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import OwnerDep, SessionDep
from app.core.history import generation_detail

router = APIRouter(prefix="/generations", tags=["memory"])


@router.get(
    "/{generation_id}", responses={404: {"description": "no such generation (or not yours)"}}
)
def get_generation(generation_id: str, session: SessionDep, owner: OwnerDep) -> dict[str, Any]:
    """The task, language, code, text, params and model; the context items the model was
    given; its tool calls; every execution of its code; its ratings."""
    return generation_detail(session=session, generation_id=generation_id, owner=owner)
