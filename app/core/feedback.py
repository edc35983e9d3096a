"""User ratings of generations: one per key and generation, a new one replaces the old.

A rating, in one transaction: (1) lock the generation's row with a no-op UPDATE scoped
to the caller's workspace (none matched: 404, so another workspace's generation looks
missing); (2) upsert the key's `feedback_log` row (unique per generation and key); (3)
set the generation's count and mean from its log rows. Step 1 comes first so concurrent
ratings of one generation serialise on its row (PostgreSQL row lock; SQLite has one
writer): under READ COMMITTED step 3's snapshot is taken after the lock was granted,
so it sees every rating committed before it, and the aggregate is always the log's.
Do not compute the mean in Python from values read earlier: that loses updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput, NotFound
from app.core.models import DEFAULT_WORKSPACE, CodeHistory, FeedbackLog, utcnow
from app.core.upsert import insert_for

MAX_COMMENT_CHARS = 10_000


@dataclass(frozen=True)
class FeedbackResult:
    generation_id: str
    feedback_score: float
    feedback_count: int

    def to_json(self) -> dict[str, object]:
        return {
            "generation_id": self.generation_id,
            "feedback_score": self.feedback_score,
            "feedback_count": self.feedback_count,
        }


def record_feedback(
    *,
    session: Session,
    generation_id: str,
    score: float,
    comment: str | None = None,
    owner: str = "anonymous",
    workspace: str = DEFAULT_WORKSPACE,
) -> FeedbackResult:
    """Rate a generation (0.0 worst … 1.0 best) as `owner`, replacing that key's earlier
    rating. Flushes; the caller's scope commits.

    Raises InvalidInput for a score outside [0, 1] (or NaN) or an overlong comment, and
    NotFound for a generation the workspace does not have.
    """
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise InvalidInput("score must be a number between 0 and 1", detail={"field": "score"})
    if not 0.0 <= score <= 1.0:
        raise InvalidInput("score must be between 0 and 1", detail={"field": "score"})
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise InvalidInput(
            f"comment is longer than {MAX_COMMENT_CHARS} characters", detail={"field": "comment"}
        )
    locked = session.execute(
        update(CodeHistory)
        .where(CodeHistory.id == generation_id, CodeHistory.workspace_id == workspace)
        .values(feedback_count=CodeHistory.feedback_count)
        .returning(CodeHistory.id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if locked is None:
        raise NotFound(f"generation {generation_id!r} not found", detail={"id": generation_id})
    rating = {"score": float(score), "comment": comment, "created_at": utcnow()}
    session.execute(
        insert_for(session, FeedbackLog)
        .values(generation_id=generation_id, owner=owner, **rating)
        .on_conflict_do_update(index_elements=["generation_id", "owner"], set_=rating)
    )
    logged = select(FeedbackLog).where(FeedbackLog.generation_id == generation_id).subquery()
    row = session.execute(
        update(CodeHistory)
        .where(CodeHistory.id == generation_id)
        .values(
            feedback_count=select(func.count()).select_from(logged).scalar_subquery(),
            feedback_score=select(func.avg(logged.c.score)).scalar_subquery(),
        )
        .returning(CodeHistory.feedback_score, CodeHistory.feedback_count)
        .execution_options(synchronize_session=False)
    ).one()
    session.flush()
    return FeedbackResult(generation_id, float(row.feedback_score), int(row.feedback_count))
