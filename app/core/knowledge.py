"""Curated knowledge snippets: list by language, add one.

Items are embedded by the retrieval worker (it finds rows without an embedding), so
adding one here needs no model and works from the API process.

Items belong to a workspace, or to none (global: the starter snippets). A workspace
sees its own and the global ones; a title is unique per language within a workspace
(a workspace may reuse a starter snippet's title).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import Conflict, InvalidInput, PayloadTooLarge
from app.core.fields import check_language, check_limit, iso_utc
from app.core.models import DEFAULT_WORKSPACE, KnowledgeItem
from app.core.upsert import insert_for

MAX_TITLE_CHARS = 300
MAX_TAGS = 20
MAX_TAG_CHARS = 50
MAX_CONTENT_BYTES = 65_536
MAX_LIST_LIMIT = 200


def visible_in(workspace: str) -> Any:
    """The SQL condition for knowledge a workspace sees: its own and the global items."""
    return or_(KnowledgeItem.workspace_id.is_(None), KnowledgeItem.workspace_id == workspace)


def list_knowledge(
    *,
    session: Session,
    language: str,
    limit: int = 50,
    offset: int = 0,
    workspace: str = DEFAULT_WORKSPACE,
) -> list[KnowledgeItem]:
    """A language's snippets seen by `workspace`, best-rated first (unrated ones at the
    neutral prior)."""
    check_language(language)
    check_limit(limit, maximum=MAX_LIST_LIMIT)
    if offset < 0:
        raise InvalidInput("offset must not be negative", detail={"field": "offset"})
    neutral = get_settings().retrieval_neutral_feedback
    rating = func.coalesce(KnowledgeItem.feedback_score, neutral)
    query = (
        select(KnowledgeItem)
        .where(KnowledgeItem.language == language, visible_in(workspace))
        .order_by(
            rating.desc(), KnowledgeItem.usage_count.desc(), KnowledgeItem.title, KnowledgeItem.id
        )
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
    workspace: str | None = DEFAULT_WORKSPACE,
) -> KnowledgeItem:
    """Add a snippet to `workspace` (None: global, seen by all). Conflict if that
    workspace already has one with this title in this language."""
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
    values = {"language": language, "title": title, "content": content, "tags": clean_tags,
              "source": source, "workspace_id": workspace}  # fmt: skip
    new_id = session.scalar(
        on_title_conflict_do_nothing(
            insert_for(session, KnowledgeItem).values(**values), workspace
        ).returning(KnowledgeItem.id)
    )
    if new_id is None:
        raise Conflict(
            f"{language} already has a snippet titled {title!r}",
            detail={"language": language, "title": title},
        )
    item = session.get(KnowledgeItem, new_id)
    assert item is not None
    return item


def on_title_conflict_do_nothing(insert: Any, workspace: str | None) -> Any:
    """`insert` that skips a title its scope already has: a workspace's (a unique
    constraint) or the global items' (a partial unique index, named by its WHERE)."""
    if workspace is None:
        return insert.on_conflict_do_nothing(
            index_elements=["language", "title"], index_where=KnowledgeItem.workspace_id.is_(None)
        )
    return insert.on_conflict_do_nothing(index_elements=["workspace_id", "language", "title"])


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
