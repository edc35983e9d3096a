"""`GET /knowledge/get/{language}` and `POST /knowledge`: the curated snippet base."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import CallerDep, SessionDep
from app.api.errors import error_responses
from app.api.schemas import Language, StrictBody
from app.core.fields import NOT_BLANK_PATTERN
from app.core.knowledge import (
    MAX_CONTENT_BYTES,
    MAX_LIST_LIMIT,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    create_knowledge,
    knowledge_to_json,
    list_knowledge,
)

router = APIRouter(
    prefix="/knowledge", tags=["memory"], responses=error_responses(401, 422, 429, 503)
)
# A tag has something besides whitespace (it is stored stripped).
Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS, pattern=NOT_BLANK_PATTERN)]


class KnowledgeCreate(StrictBody):
    language: Language
    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    content: str = Field(  # over the byte cap is a 413 (app/core/knowledge)
        min_length=1,
        json_schema_extra={"maxLength": MAX_CONTENT_BYTES},
        description=f"at most {MAX_CONTENT_BYTES} bytes of UTF-8",
    )
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)


class KnowledgeItemOut(BaseModel):
    id: str
    language: str
    title: str
    content: str
    tags: list[str]
    source: str
    feedback_score: float | None
    feedback_count: int
    usage_count: int
    created_at: datetime


class KnowledgeList(BaseModel):
    language: Language
    items: list[KnowledgeItemOut]


@router.get("/get/{language}", response_model=None, responses={200: {"model": KnowledgeList}})
def get_knowledge(
    language: Language,
    session: SessionDep,
    caller: CallerDep,
    limit: int = Query(default=50, ge=1, le=MAX_LIST_LIMIT),
    offset: int = Query(default=0, ge=0),
) -> dict[str, Any]:
    """A language's snippets (the workspace's and the global ones), best-rated and
    most-used first."""
    items = list_knowledge(
        session=session, language=language, limit=limit, offset=offset,
        workspace=caller.workspace,
    )  # fmt: skip
    return {"language": language, "items": [knowledge_to_json(item) for item in items]}


@router.post(
    "",
    status_code=201,
    response_model=None,
    responses={201: {"model": KnowledgeItemOut}, **error_responses(400, 409, 413)},
)
def post_knowledge(body: KnowledgeCreate, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """Add a snippet to the workspace; it becomes searchable there once a retrieval
    worker has embedded it."""
    item = create_knowledge(
        session=session,
        language=body.language,
        title=body.title,
        content=body.content,
        tags=body.tags,
        source=f"user:{caller.owner}"[:64],
        workspace=caller.workspace,
    )
    session.commit()  # committed before the client hears 201
    return knowledge_to_json(item)
