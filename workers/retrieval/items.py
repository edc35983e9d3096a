"""What a search hit is, read fresh from SQL at query time (feedback, usage, text)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.models import CodeHistory, KnowledgeItem
from workers.retrieval.embedding_store import GENERATION, KNOWLEDGE

_IN_CHUNK = 500  # stay well below every driver's bound-parameter limit


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
    # Plain column reads, not ORM entities: this runs on every search, for every hit.
    h = CodeHistory
    for row in _in_chunks(
        session,
        select(
            h.id, h.language, h.task, h.code, h.text, h.feedback_score, h.feedback_count,
            h.usage_count, h.project_id, h.last_execution_status, h.verification_status,
        ),
        h.id,
        wanted[GENERATION],
    ):  # fmt: skip
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
    k = KnowledgeItem
    for row in _in_chunks(
        session,
        select(
            k.id, k.language, k.title, k.content, k.feedback_score, k.feedback_count,
            k.usage_count,
        ),
        k.id,
        wanted[KNOWLEDGE],
    ):  # fmt: skip
        found[(KNOWLEDGE, row.id)] = ItemDetails(
            KNOWLEDGE,
            row.id,
            row.language,
            row.title,
            None,
            row.content,
            row.feedback_score,
            row.feedback_count,
            row.usage_count,
        )
    return found


def _in_chunks(session: Session, query: Any, column: Any, ids: list[str]) -> list[Any]:
    """The rows of `query` whose `column` is one of `ids`, asked in chunks."""
    rows: list[Any] = []
    for start in range(0, len(ids), _IN_CHUNK):
        rows += session.execute(query.where(column.in_(ids[start : start + _IN_CHUNK]))).all()
    return rows
