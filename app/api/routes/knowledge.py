"""`GET /knowledge/get/{language}` and `POST /knowledge`: the curated snippet base."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import OwnerDep, SessionDep
from app.core.knowledge import (
    MAX_LIST_LIMIT,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    create_knowledge,
    knowledge_to_json,
    list_knowledge,
)

router = APIRouter(prefix="/knowledge", tags=["memory"])


class KnowledgeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: str
    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    content: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)


@router.get("/get/{language}")
def get_knowledge(
    language: str,
    session: SessionDep,
    _owner: OwnerDep,
    limit: int = Query(default=50, ge=1, le=MAX_LIST_LIMIT),
    offset: int = Query(default=0, ge=0),
) -> dict[str, Any]:
    """A language's snippets, best-rated and most-used first."""
    items = list_knowledge(session=session, language=language, limit=limit, offset=offset)
    return {"language": language, "items": [knowledge_to_json(item) for item in items]}


@router.post("", status_code=201)
def post_knowledge(body: KnowledgeCreate, session: SessionDep, owner: OwnerDep) -> dict[str, Any]:
    """Add a snippet; it becomes searchable once a retrieval worker has embedded it."""
    item = create_knowledge(
        session=session,
        language=body.language,
        title=body.title,
        content=body.content,
        tags=body.tags,
        source=f"user:{owner}"[:64],
    )
    session.commit()  # committed before the client hears 201
    return knowledge_to_json(item)
