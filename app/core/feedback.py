"""User ratings of generations.

A rating appends a `feedback_log` row and folds the score into the generation's running
mean in the same transaction. The mean is computed by one UPDATE whose SET clause reads
the row's own old values, so concurrent ratings serialise on the row lock (PostgreSQL
re-evaluates the expression on the newest row version; SQLite has one writer) and none
is lost. Do not "simplify" this into read-modify-write in Python: that loses updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import case, update
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput, NotFound
from app.core.models import CodeHistory, FeedbackLog

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
) -> FeedbackResult:
    """Rate a generation (0.0 worst … 1.0 best). Flushes; the caller's scope commits.

    Raises InvalidInput for a score outside [0, 1] (or NaN) or an overlong comment, and
    NotFound for an unknown generation.
    """
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise InvalidInput("score must be a number between 0 and 1", detail={"field": "score"})
    if not 0.0 <= score <= 1.0:
        raise InvalidInput("score must be between 0 and 1", detail={"field": "score"})
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise InvalidInput(
            f"comment is longer than {MAX_COMMENT_CHARS} characters", detail={"field": "comment"}
        )
    old_count = CodeHistory.feedback_count
    old_mean = case((old_count > 0, CodeHistory.feedback_score), else_=0.0)
    row = session.execute(
        update(CodeHistory)
        .where(CodeHistory.id == generation_id)
        .values(
            feedback_count=old_count + 1,
            feedback_score=(old_mean * old_count + float(score)) / (old_count + 1),
        )
        .returning(CodeHistory.feedback_score, CodeHistory.feedback_count)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        raise NotFound(f"generation {generation_id!r} not found", detail={"id": generation_id})
    session.add(
        FeedbackLog(generation_id=generation_id, owner=owner, score=float(score), comment=comment)
    )
    session.flush()
    return FeedbackResult(generation_id, float(row.feedback_score), int(row.feedback_count))
