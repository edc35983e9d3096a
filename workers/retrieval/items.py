"""What a search hit is, read fresh from SQL at query time (feedback, usage, text)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.models import CodeHistory, KnowledgeItem
from workers.retrieval.embedding_store import GENERATION, KNOWLEDGE


@dataclass(frozen=True)
class ItemDetails:
    item_type: str
    item_id: str
    language: str
    title: str | None  # knowledge items have one; generations show their task instead
    task: str | None
    body: str  # a snippet's content, a generation's code (or text when it has no code)
    feedback_score: float | None
    feedback_count: int
    usage_count: int
    project_id: str | None = None
    last_execution_status: str | None = None  # generations: how their code last ran
    verification_status: str | None = None  # generations: passed|failed|not_run


def load_details(
    session: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], ItemDetails]:
    """Details of the existing items among `(item_type, item_id)` keys; gone ones are absent."""
    wanted: dict[str, list[str]] = {GENERATION: [], KNOWLEDGE: []}
    for item_type, item_id in keys:
        wanted.setdefault(item_type, []).append(item_id)
    found: dict[tuple[str, str], ItemDetails] = {}
    if wanted[GENERATION]:
        for row in session.scalars(
            select(CodeHistory).where(CodeHistory.id.in_(wanted[GENERATION]))
        ):
            found[(GENERATION, row.id)] = ItemDetails(
                GENERATION,
                row.id,
                row.language,
                None,
                row.task,
                row.code or row.text,
                row.feedback_score,
                row.feedback_count,
                row.usage_count,
                row.project_id,
                row.last_execution_status,
                row.verification_status,
            )
    if wanted[KNOWLEDGE]:
        for item in session.scalars(
            select(KnowledgeItem).where(KnowledgeItem.id.in_(wanted[KNOWLEDGE]))
        ):
            found[(KNOWLEDGE, item.id)] = ItemDetails(
                KNOWLEDGE,
                item.id,
                item.language,
                item.title,
                None,
                item.content,
                item.feedback_score,
                item.feedback_count,
                item.usage_count,
            )
    return found
