"""Generations as remembered: store one, list the best, count how often each is reused.

`store_generation` is what the generate worker calls once a generation finished; the
embedding is added afterwards by `workers.retrieval.service.index_generation` (outside
this transaction, so a slow embedder never holds a SQL lock).

Generations are memory: every read takes the caller's workspace and sees only that
workspace's generations; another workspace's id is a 404, like a missing one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import NotFound
from app.core.fields import check_language, check_limit, iso_utc
from app.core.models import (
    DEFAULT_WORKSPACE,
    CodeHistory,
    FeedbackLog,
    FunctionCall,
    Job,
    KnowledgeItem,
    new_id,
)


def store_generation(
    *,
    session: Session,
    task: str,
    language: str,
    text: str,
    code: str,
    model: str,
    params: dict[str, Any] | None = None,
    job_id: str | None = None,
    owner: str = "anonymous",
    workspace: str = DEFAULT_WORKSPACE,
    project_id: str | None = None,
    finish_reason: str | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    generation_id: str | None = None,
    context: list[dict[str, Any]] | None = None,
    rounds: list[dict[str, Any]] | None = None,
    verification_status: str | None = None,
    last_execution_status: str | None = None,
    source: str = "model",
) -> CodeHistory:
    """Write a `code_history` row and flush it (its `id` is set); the caller commits.

    `generation_id` lets the agent name the row before it exists (its tool calls and
    verification runs point at it while the generation is still running).
    """
    row = CodeHistory(
        id=generation_id or new_id(),
        context=list(context or []),
        rounds=list(rounds or []),
        verification_status=verification_status,
        last_execution_status=last_execution_status,
        source=source,
        job_id=job_id,
        owner=owner,
        workspace_id=workspace,
        project_id=project_id,
        task=task,
        language=language,
        text=text,
        code=code,
        model=model,
        params=dict(params or {}),
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    session.add(row)
    session.flush()
    return row


def best_history(
    *, session: Session, language: str, limit: int = 10, workspace: str = DEFAULT_WORKSPACE
) -> list[CodeHistory]:
    """A workspace's highest-rated generations of a language; ties by usage, then the
    newest first. Unrated generations sit at the neutral prior (between liked and
    disliked ones), as they do in retrieval.
    """
    check_language(language)
    check_limit(limit, maximum=100)
    neutral = get_settings().retrieval_neutral_feedback
    rating = func.coalesce(CodeHistory.feedback_score, neutral)
    query = select(CodeHistory).where(
        CodeHistory.language == language, CodeHistory.workspace_id == workspace
    )
    query = query.order_by(
        rating.desc(),
        CodeHistory.usage_count.desc(),
        CodeHistory.created_at.desc(),
        CodeHistory.id,
    ).limit(limit)
    return list(session.scalars(query))


def get_generation(
    *, session: Session, generation_id: str, workspace: str = DEFAULT_WORKSPACE
) -> CodeHistory:
    row = session.get(CodeHistory, generation_id)
    if row is None or row.workspace_id != workspace:
        raise NotFound(f"generation {generation_id!r} not found", detail={"id": generation_id})
    return row


def record_usage(
    *,
    session: Session,
    generation_ids: Iterable[str] = (),
    knowledge_ids: Iterable[str] = (),
) -> None:
    """Count one more use of each item (it was put into a prompt). Atomic per row."""
    for model, ids in ((CodeHistory, set(generation_ids)), (KnowledgeItem, set(knowledge_ids))):
        if ids:
            session.execute(
                update(model)
                .where(model.id.in_(sorted(ids)))
                .values(usage_count=model.usage_count + 1)
                .execution_options(synchronize_session=False)
            )


def record_execution_status(
    *, session: Session, generation_id: str, status: str, workspace: str = DEFAULT_WORKSPACE
) -> bool:
    """Remember how the generation's code last ran; False if the workspace has no such
    generation (an execution naming another workspace's generation changes nothing)."""
    result = session.execute(
        update(CodeHistory)
        .where(CodeHistory.id == generation_id, CodeHistory.workspace_id == workspace)
        .values(last_execution_status=status)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def generation_to_json(row: CodeHistory) -> dict[str, Any]:
    return {
        "generation_id": row.id,
        "job_id": row.job_id,
        "task": row.task,
        "language": row.language,
        "code": row.code,
        "text": row.text,
        "model": row.model,
        "project_id": row.project_id,
        "finish_reason": row.finish_reason,
        "feedback_score": row.feedback_score,
        "feedback_count": row.feedback_count,
        "usage_count": row.usage_count,
        "last_execution_status": row.last_execution_status,
        "created_at": iso_utc(row.created_at),
    }


def generation_detail(
    *, session: Session, generation_id: str, workspace: str = DEFAULT_WORKSPACE
) -> dict[str, Any]:
    """Everything stored about one generation: what it was shown, what it called, how
    its code ran (runs from this workspace), what users thought. Any key of the
    workspace may read it; another workspace's generation is a 404."""
    row = get_generation(session=session, generation_id=generation_id, workspace=workspace)
    calls = session.scalars(
        select(FunctionCall)
        .where(FunctionCall.generation_id == generation_id)
        .order_by(FunctionCall.id)
    )
    executions = session.scalars(
        select(Job)
        .where(
            Job.generation_id == generation_id,
            Job.kind == "execute",
            Job.workspace_id == workspace,
        )
        .order_by(Job.created_at, Job.id)
    )
    ratings = session.scalars(
        select(FeedbackLog)
        .where(FeedbackLog.generation_id == generation_id)
        .order_by(FeedbackLog.id)
    )
    return {
        **generation_to_json(row),
        "params": row.params,
        "source": row.source,
        "verification_status": row.verification_status,
        "context": row.context,
        "rounds": row.rounds,
        "tool_calls": [
            {
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
                "ok": call.ok,
                "origin": call.origin,
                "duration_ms": round(call.duration_ms, 1),
                "result": call.result,
            }
            for call in calls
        ],
        "executions": [
            {
                "job_id": job.id,
                "status": job.status,
                "parent_id": job.parent_id,
                "result_status": (job.result or {}).get("status"),
                "created_at": iso_utc(job.created_at),
            }
            for job in executions
        ],
        "feedback": {
            "score": row.feedback_score,
            "count": row.feedback_count,
            "ratings": [
                {"score": r.score, "comment": r.comment, "created_at": iso_utc(r.created_at)}
                for r in ratings
            ],
        },
    }
