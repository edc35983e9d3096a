"""Curated knowledge snippets: list by language, add one.

Items are embedded by the retrieval worker (it finds rows without an embedding), so
adding one here needs no model and works from the API process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import Conflict, InvalidInput, PayloadTooLarge
from app.core.fields import check_language, check_limit, iso_utc
from app.core.models import KnowledgeItem
from app.core.upsert import insert_for

MAX_TITLE_CHARS = 300
MAX_TAGS = 20
MAX_TAG_CHARS = 50
MAX_CONTENT_BYTES = 65_536
MAX_LIST_LIMIT = 200


def list_knowledge(
    *, session: Session, language: str, limit: int = 50, offset: int = 0
) -> list[KnowledgeItem]:
    """A language's snippets, best-rated first (unrated ones at the neutral prior)."""
    check_language(language)
    check_limit(limit, maximum=MAX_LIST_LIMIT)
    if offset < 0:
        raise InvalidInput("offset must not be negative", detail={"field": "offset"})
    neutral = get_settings().retrieval_neutral_feedback
    rating = func.coalesce(KnowledgeItem.feedback_score, neutral)
    query = (
        select(KnowledgeItem)
        .where(KnowledgeItem.language == language)
        .order_by(rating.desc(), KnowledgeItem.usage_count.desc(), KnowledgeItem.title)
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(query))


def create_knowledge(
    *,
    session: Session,
    language: str,
    title: str,
    content: str,
    tags: Sequence[str] = (),
    source: str = "user",
) -> KnowledgeItem:
    """Add a snippet. Conflict if the language already has one with this title."""
    check_language(language)
    title = title.strip()
    if not title or len(title) > MAX_TITLE_CHARS:
        raise InvalidInput(
            f"title must be 1 to {MAX_TITLE_CHARS} characters", detail={"field": "title"}
        )
    if not content.strip():
        raise InvalidInput("content must not be empty", detail={"field": "content"})
    size = len(content.encode())
    if size > MAX_CONTENT_BYTES:
        raise PayloadTooLarge(
            f"content is {size} bytes; the limit is {MAX_CONTENT_BYTES}",
            detail={"field": "content", "limit": MAX_CONTENT_BYTES},
        )
    clean_tags = _check_tags(tags)
    new_id = session.scalar(
        insert_for(session, KnowledgeItem)
        .values(language=language, title=title, content=content, tags=clean_tags, source=source)
        .on_conflict_do_nothing(index_elements=["language", "title"])
        .returning(KnowledgeItem.id)
    )
    if new_id is None:
        raise Conflict(
            f"{language} already has a snippet titled {title!r}",
            detail={"language": language, "title": title},
        )
    item = session.get(KnowledgeItem, new_id)
    assert item is not None
    return item


def knowledge_to_json(item: KnowledgeItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "language": item.language,
        "title": item.title,
        "content": item.content,
        "tags": list(item.tags or []),
        "source": item.source,
        "feedback_score": item.feedback_score,
        "feedback_count": item.feedback_count,
        "usage_count": item.usage_count,
        "created_at": iso_utc(item.created_at),
    }


def _check_tags(tags: Sequence[str]) -> list[str]:
    if isinstance(tags, str) or len(tags) > MAX_TAGS:
        raise InvalidInput(f"tags must be a list of at most {MAX_TAGS}", detail={"field": "tags"})
    clean = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or len(tag) > MAX_TAG_CHARS:
            raise InvalidInput(
                f"each tag must be 1 to {MAX_TAG_CHARS} characters", detail={"field": "tags"}
            )
        clean.append(tag.strip())
    return clean
