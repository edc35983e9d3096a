"""Embeddings in SQL, the source of truth every index replica is built and caught up from.

Each item (a generation or a knowledge snippet) has at most one row per model (unique
constraint), so two workers embedding the same new item race harmlessly: the second
insert does nothing. `seq` orders rows for catch-up, but on PostgreSQL a row may become
visible after rows with higher seqs (ids are handed out at insert, rows appear at
commit): the retriever keeps re-asking for such gaps (see retriever.py).

Each row carries its item's workspace (NULL: global), copied when it is embedded, so a
replica filters searches by workspace from the catalog alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app.core.models import CodeHistory, Embedding, KnowledgeItem
from app.core.upsert import insert_for
from workers.retrieval.vector_index import LabelInfo

GENERATION, KNOWLEDGE = "generation", "knowledge"
ITEM_TYPES = (GENERATION, KNOWLEDGE)
_IN_CHUNK = 500  # stay well below every driver's bound-parameter limit


@dataclass(frozen=True)
class EmbeddingRow:
    seq: int
    info: LabelInfo
    vector: np.ndarray


@dataclass(frozen=True)
class PendingItem:
    """An item that has no embedding for the model yet."""

    item_type: str
    item_id: str
    language: str
    text: str
    workspace: str | None = None


def generation_text(task: str, code: str, text: str) -> str:
    """What a generation is embedded as: the task it answered, then its code."""
    return f"{task}\n{code or text}"


def knowledge_text(title: str, content: str) -> str:
    return f"{title}\n{content}"


def _row(
    seq: int,
    item_type: str,
    item_id: str,
    language: str,
    workspace: str | None,
    dim: int,
    blob: bytes,
) -> EmbeddingRow:
    vector = np.frombuffer(blob, dtype="<f4")
    if vector.shape != (dim,):
        raise ValueError(f"embedding {seq} holds {vector.size} floats, expected {dim}")
    return EmbeddingRow(seq, LabelInfo(item_type, item_id, language, workspace), vector)


def _columns() -> tuple[Any, ...]:
    return (
        Embedding.seq,
        Embedding.item_type,
        Embedding.item_id,
        Embedding.language,
        Embedding.workspace_id,
        Embedding.dim,
        Embedding.vector,
    )


def rows_after(
    session: Session, model: str, dim: int, hwm: int, also: Iterable[int] = ()
) -> list[EmbeddingRow]:
    """Rows with `seq > hwm`, plus the rows among `also` (gaps) that have appeared."""
    query = select(*_columns()).where(
        Embedding.model == model, Embedding.dim == dim, Embedding.seq > hwm
    )
    rows = [_row(*row) for row in session.execute(query.order_by(Embedding.seq))]
    return rows + rows_by_seq(session, model, dim, also)


def rows_by_seq(session: Session, model: str, dim: int, seqs: Iterable[int]) -> list[EmbeddingRow]:
    query = select(*_columns()).where(Embedding.model == model, Embedding.dim == dim)
    wanted = sorted(set(seqs))
    rows: list[EmbeddingRow] = []
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        rows.extend(_row(*row) for row in session.execute(query.where(Embedding.seq.in_(chunk))))
    return rows


def iter_all_rows(
    session: Session, model: str, dim: int, batch: int = 2000
) -> Iterator[list[EmbeddingRow]]:
    """Every row of the model in seq order, a batch at a time (keyset pagination)."""
    after = 0
    base = select(*_columns()).where(Embedding.model == model, Embedding.dim == dim)
    while True:
        chunk = list(
            session.execute(base.where(Embedding.seq > after).order_by(Embedding.seq).limit(batch))
        )
        if not chunk:
            return
        yield [_row(*row) for row in chunk]
        after = chunk[-1][0]


def catalog(session: Session, model: str, dim: int) -> dict[int, LabelInfo]:
    """seq → item of every row of the model (no vectors): what a replica should hold."""
    rows = session.execute(
        select(
            Embedding.seq,
            Embedding.item_type,
            Embedding.item_id,
            Embedding.language,
            Embedding.workspace_id,
        ).where(Embedding.model == model, Embedding.dim == dim)
    )
    return {seq: LabelInfo(t, i, lang, ws) for seq, t, i, lang, ws in rows}


def max_seq(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.max(Embedding.seq), 0))) or 0)


def pending_items(session: Session, model: str, limit: int) -> list[PendingItem]:
    """Generations and knowledge items that have no embedding for `model` yet."""
    pending: list[PendingItem] = []
    missing_gen = (
        select(
            CodeHistory.id,
            CodeHistory.language,
            CodeHistory.task,
            CodeHistory.code,
            CodeHistory.text,
            CodeHistory.workspace_id,
        )
        .outerjoin(
            Embedding,
            and_(
                Embedding.item_type == GENERATION,
                Embedding.item_id == CodeHistory.id,
                Embedding.model == model,
            ),
        )
        .where(Embedding.seq.is_(None))
        .limit(limit)
    )
    for item_id, language, task, code, text, workspace in session.execute(missing_gen):
        pending.append(
            PendingItem(GENERATION, item_id, language, generation_text(task, code, text), workspace)
        )
    missing_kb = (
        select(
            KnowledgeItem.id,
            KnowledgeItem.language,
            KnowledgeItem.title,
            KnowledgeItem.content,
            KnowledgeItem.workspace_id,
        )
        .outerjoin(
            Embedding,
            and_(
                Embedding.item_type == KNOWLEDGE,
                Embedding.item_id == KnowledgeItem.id,
                Embedding.model == model,
            ),
        )
        .where(Embedding.seq.is_(None))
        .limit(max(limit - len(pending), 0))
    )
    for item_id, language, title, content, scope in session.execute(missing_kb):
        pending.append(
            PendingItem(KNOWLEDGE, item_id, language, knowledge_text(title, content), scope)
        )
    return pending


def may_have_pending(session: Session, model: str) -> bool:
    """False when every item has an embedding for `model`, by counting (three index
    scans, far cheaper than `pending_items`' anti-joins). Exact unless items were deleted
    while others were added; the periodic full scan covers that."""
    items = (session.scalar(select(func.count()).select_from(CodeHistory)) or 0) + (
        session.scalar(select(func.count()).select_from(KnowledgeItem)) or 0
    )
    embedded = session.scalar(
        select(func.count()).select_from(Embedding).where(Embedding.model == model)
    )
    return items > (embedded or 0)


def generation_item(session: Session, generation_id: str) -> PendingItem | None:
    row = session.get(CodeHistory, generation_id)
    if row is None:
        return None
    return PendingItem(
        GENERATION,
        row.id,
        row.language,
        generation_text(row.task, row.code, row.text),
        row.workspace_id,
    )


def store_vectors(
    session: Session, model: str, items: Sequence[PendingItem], vectors: np.ndarray
) -> None:
    """Insert one embedding row per item; an item another worker embedded first is skipped."""
    for item, vector in zip(items, vectors, strict=True):
        blob = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        session.execute(
            insert_for(session, Embedding)
            .values(
                item_type=item.item_type,
                item_id=item.item_id,
                language=item.language,
                workspace_id=item.workspace,
                model=model,
                dim=int(vector.shape[0]),
                vector=blob,
            )
            .on_conflict_do_nothing(index_elements=["item_type", "item_id", "model"])
        )
