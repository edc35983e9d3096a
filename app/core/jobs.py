"""The job lifecycle in SQL, shared by the API, the workers and the reconciler.

SQL is the source of truth; every transition is a conditional UPDATE so two parties
(an API cancel and a worker claim, say) can race safely: exactly one of them wins.
A job's row is always committed before its Celery message is sent (`dispatch`).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Celery
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core import lifecycle, names
from app.core.errors import BadRequest, NotFound
from app.core.fields import iso_utc
from app.core.models import DEFAULT_WORKSPACE, Job, as_utc, utcnow
from app.core.webhooks import PENDING as WEBHOOK_PENDING
from app.core.webhooks import webhook_json

log = logging.getLogger(__name__)


def job_to_json(
    job: Job, *, queue_position: int | None = None, progress_tokens: int | None = None
) -> dict[str, Any]:
    progress: dict[str, Any] | None = None
    if job.kind == "generate":
        tokens = job.progress_tokens if progress_tokens is None else progress_tokens
        progress = {"tokens": tokens, "max_tokens": job.request.get("max_new_tokens")}
    base = f"/jobs/{job.id}"
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "created_at": iso_utc(job.created_at),
        "started_at": iso_utc(job.started_at),
        "finished_at": iso_utc(job.finished_at),
        "attempts": job.attempts,
        "queue_position": queue_position,
        "progress": progress,
        "request": job.request,
        "result": job.result,
        "error": job.error,
        "webhook": webhook_json(job),
        "links": {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"},
    }


def create_job(
    session: Session,
    *,
    kind: str,
    owner: str,
    request: dict[str, Any],
    idempotency_key: str | None = None,
    parent_id: str | None = None,
    workspace: str = DEFAULT_WORKSPACE,
    callback_url: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job; with an idempotency key, return (existing, False) on repeat.

    `parent_id` names the job that started this one (the agent's tool calls). An
    execution that names a `generation_id` is linked to that generation. `workspace` is
    the owner's: the memory the job's worker reads and writes. A `callback_url` is
    POSTed the final job (app/core/webhooks.py): its delivery is pending from here on.
    """
    _task, queue = names.JOB_ROUTES[kind]
    if idempotency_key is not None:
        existing = session.scalar(
            select(Job).where(Job.owner == owner, Job.idempotency_key == idempotency_key)
        )
        if existing is not None:
            return existing, False
    generation_id = request.get("generation_id") if kind == "execute" else None
    job = Job(
        kind=kind,
        queue=queue,
        owner=owner,
        workspace_id=workspace,
        request=request,
        idempotency_key=idempotency_key,
        parent_id=parent_id,
        generation_id=generation_id if isinstance(generation_id, str) else None,
        callback_url=callback_url,
        webhook_status=WEBHOOK_PENDING if callback_url else None,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # a concurrent repeat won the unique constraint
        session.rollback()
        existing = session.scalar(
            select(Job).where(Job.owner == owner, Job.idempotency_key == idempotency_key)
        )
        if existing is None:
            raise
        return existing, False
    return job, True


def dispatch(session: Session, celery: Celery, client: redis.Redis, job: Job, ttl_s: int) -> None:
    """Send the job's message, then mark it sent for the reconciler (workers/reconcile.py).

    In that order: Redis' log is append-only, so whatever it loses (a kill before its
    AOF was written) is a suffix, and a marker it kept means the message was kept too.
    A send that fails leaves no marker, so the job is sent again; a marker that fails
    after a send costs at most a duplicate message, which the lease drops."""
    task, queue = names.JOB_ROUTES[job.kind]
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(dispatches=Job.dispatches + 1, dispatched_at=utcnow())
    )
    session.commit()
    # Results live in SQL: Celery's backend would only subscribe to a result that never comes.
    celery.send_task(task, args=[job.id], task_id=job.id, queue=queue, ignore_result=True)
    client.set(names.dispatch_marker_key(job.id), "1", ex=ttl_s)


def get_owned_job(session: Session, job_id: str, owner: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.owner != owner:  # another key's job looks exactly like a missing one
        raise NotFound(f"job {job_id} not found")
    return job


def queue_position(session: Session, job: Job) -> int | None:
    """1-based place among queued jobs of the same queue, None once it left the queue."""
    if job.status != names.QUEUED:
        return None
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.queue == job.queue, Job.status == names.QUEUED, Job.created_at < job.created_at)
    )
    return int(ahead or 0) + 1


# A page cursor: the last job's creation time (µs since the epoch) and id. Every string
# of this form is a valid cursor (17 digits stay within year 9999), so the schema of
# `GET /jobs?cursor=` can say exactly what it accepts.
CURSOR_PATTERN = r"^[0-9]{1,17}\.[0-9a-f-]{1,36}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(job: Job) -> str:
    created = as_utc(job.created_at)
    return f"{(created - _EPOCH) // _MICROSECOND}.{job.id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    if not _CURSOR.fullmatch(cursor):
        raise BadRequest("invalid cursor", detail={"field": "cursor", "pattern": CURSOR_PATTERN})
    micros, job_id = cursor.split(".", 1)
    return _EPOCH + int(micros) * _MICROSECOND, job_id


def list_jobs(
    session: Session,
    *,
    owner: str,
    kind: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Job], str | None]:
    """The owner's jobs, newest first, keyset-paginated."""
    query = select(Job).where(Job.owner == owner)
    if kind:
        query = query.where(Job.kind == kind)
    if status:
        query = query.where(Job.status == status)
    if cursor is not None:  # "" is a malformed cursor, not the first page
        created, job_id = decode_cursor(cursor)
        if session.get_bind().dialect.name == "sqlite":
            created = created.astimezone(UTC).replace(tzinfo=None)
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def transition(
    session: Session,
    job_id: str,
    *,
    from_statuses: tuple[str, ...],
    status: str,
    attempt: int | None = None,
    **values: Any,
) -> bool:
    """Conditional UPDATE along an edge of `lifecycle.TRANSITIONS`; True if this caller won.

    `attempt` fences the write: it applies only while the row still holds that attempt,
    so a runner whose job was taken from it (re-sent, claimed again) can never finish
    into, or fail, the rerun.
    """
    lifecycle.check(from_statuses, status)
    query = update(Job).where(Job.id == job_id, Job.status.in_(from_statuses))
    if attempt is not None:
        query = query.where(Job.attempts == attempt)
    result = session.execute(
        query.values(status=status, updated_at=utcnow(), **values).execution_options(
            synchronize_session=False
        )
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]
