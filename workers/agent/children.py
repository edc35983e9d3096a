"""Child jobs: the agent's `execute_code` and `lint_code` run on the execute queue.

The generate worker never runs untrusted code itself. A child is an ordinary job (a
row written before its message, listed in `/jobs`, reconciled if its message is lost)
with `parent_id` set. The agent waits on the child's own event stream (XREAD on the
Redis Stream, so nothing published before we looked is missed), never on Celery's
`AsyncResult.get()` inside a task. SQL is checked now and then as well, so a child
whose stream expired or whose Redis data was lost still ends the wait.

A wait that runs past its deadline, or whose parent is cancelled, cancels the child.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from app.core import names
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.events import EventWriter, wait_for_events
from app.core.jobs import create_job, dispatch, transition
from app.core.models import Job, utcnow
from workers.runtime import get_redis

log = logging.getLogger(__name__)
SQL_CHECK_S = 2.0
BLOCK_MS = 500


@dataclass(frozen=True)
class ChildOutcome:
    job_id: str
    status: str  # a terminal job status, or "timeout"
    result: dict[str, Any] | None
    error: dict[str, Any] | None


def run_child(
    *,
    parent_id: str,
    owner: str,
    workspace: str,
    kind: str,
    request: dict[str, Any],
    timeout_s: float,
    cancelled: threading.Event,
) -> ChildOutcome:
    """Submit a child job and wait for its final state (or the deadline, or a cancel)."""
    from workers.celery_app import celery_app

    settings = get_settings()
    client = get_redis()
    with session_scope() as session:
        job, _ = create_job(
            session, kind=kind, owner=owner, request=request, parent_id=parent_id,
            workspace=workspace,
        )  # fmt: skip
        job_id = job.id
        dispatch(session, celery_app, client, job, settings.result_ttl_s)
    return wait_for_child(job_id, timeout_s=timeout_s, cancelled=cancelled)


def wait_for_child(job_id: str, *, timeout_s: float, cancelled: threading.Event) -> ChildOutcome:
    client = get_redis()
    deadline = time.monotonic() + timeout_s
    next_sql_check = time.monotonic() + SQL_CHECK_S
    seen = 0
    while True:
        if cancelled.is_set() or time.monotonic() >= deadline:
            cancel_child(job_id)
            status = names.CANCELLED if cancelled.is_set() else "timeout"
            return ChildOutcome(job_id, status, None, None)
        block = int(min(BLOCK_MS, max(1.0, (deadline - time.monotonic()) * 1000)))
        for event in wait_for_events(client, job_id, seen, block_ms=block):
            seen = event.seq
            if event.type == "done":
                return ChildOutcome(job_id, names.SUCCEEDED, event.data, None)
            if event.type == "error":
                return ChildOutcome(job_id, names.FAILED, None, event.data)
            if event.is_terminal:
                return ChildOutcome(job_id, str(event.data.get("status")), None, None)
        if time.monotonic() >= next_sql_check:
            next_sql_check = time.monotonic() + SQL_CHECK_S
            finished = _finished_in_sql(job_id)
            if finished is not None:
                return finished


def _finished_in_sql(job_id: str) -> ChildOutcome | None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status not in names.TERMINAL:
            return None
        return ChildOutcome(job_id, job.status, job.result, job.error)


def cancel_child(job_id: str) -> None:
    """Cancel a child: at once if still queued, through its cancel flag if running."""
    settings = get_settings()
    client = get_redis()
    with session_scope() as session:
        if transition(
            session,
            job_id,
            from_statuses=(names.QUEUED, names.RETRYING),
            status=names.CANCELLED,
            finished_at=utcnow(),
        ):
            writer = EventWriter(
                client, job_id, maxlen=settings.stream_maxlen, ttl_s=settings.stream_ttl_s
            )
            writer.emit("status", {"status": names.CANCELLED, "attempt": 0})
            return
    client.set(names.cancel_flag_key(job_id), "1", ex=settings.result_ttl_s)
    client.publish(names.cancel_channel(job_id), "cancel")
