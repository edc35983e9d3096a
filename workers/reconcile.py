"""The reconciler: no accepted job is ever lost.

Run by beat every `reconcile_interval_s`. Three repairs:
- a `queued`/`retrying` job whose message is lost: send it again. Lost means its
  dispatch marker is gone (Redis lost its data: a restart without persistence, a
  flush), or it is *stalled*: sent `redispatch_after_s` ago and its queue has moved
  past it (a job of that queue made after it was sent has started) or holds nothing
  at all. A marker outlives its message when the broker loses the message on the
  consumer's side: a worker's connection dies with a message popped but not yet
  recorded as unacknowledged, or a worker gets its message while Redis is away and
  can never claim it. A stalled job whose message was only slow (held by a busy
  worker) gets a duplicate, which the lease drops; a queue whose workers are all
  down moves nowhere and still holds its messages, so it is not flooded with copies;
- a `running` job with no lease lost its worker (a whole machine died, say): mark it
  `retrying` and send it again, or fail it once its attempts are spent
  (`requeue_lost_run`, which a run that notices its own lease gone calls at once);
- a final job whose webhook is pending and due, with no delivery queued: queue one
  (`app/core/webhooks.py`).
A re-sent job that turns out to be still queued or running is harmless: the lease lets
only one delivery run it. Both repairs are fenced by the attempt the reconciler saw, so
a worker that claimed or finished the job meanwhile wins, and a runner that comes back
after losing its lease finds its attempt gone (`jobs.transition`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

import redis
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core import names, webhooks
from app.core.config import Settings
from app.core.events import EventWriter
from app.core.jobs import dispatch, transition
from app.core.models import Job, as_utc, utcnow

log = logging.getLogger(__name__)


def reconcile_once(
    session: Session, client: redis.Redis, celery: Celery, settings: Settings
) -> dict[str, int]:
    counts = {"resent": 0, "retried": 0, "failed": 0, "webhooks": 0}
    now = utcnow()
    # A message is sent right after its row commits; give that a moment before judging.
    settled = now - timedelta(seconds=max(2.0, settings.lease_ttl_s))
    sent_at = func.coalesce(Job.dispatched_at, Job.created_at)
    waiting = session.scalars(
        select(Job).where(Job.status.in_([names.QUEUED, names.RETRYING]), sent_at < settled)
    ).all()
    marked = _marked(client, waiting)
    stalled = _stalled(session, client, [job for job in waiting if job.id in marked], now, settings)
    for job in waiting:
        if job.id in marked and job.id not in stalled:
            continue
        why = "stalled" if job.id in stalled else "lost"
        log.warning("job %s: message %s; sending it again", job.id, why)
        dispatch(session, celery, client, job, settings.result_ttl_s)
        counts["resent"] += 1

    running = session.scalars(
        select(Job).where(Job.status == names.RUNNING, Job.updated_at < settled)
    ).all()
    for job in running:
        if client.exists(names.lease_key(job.id)):
            continue
        outcome = requeue_lost_run(session, client, celery, settings, job)
        if outcome is not None:
            counts[outcome] += 1

    # Final jobs whose webhook is still pending with nothing queued for it (the
    # finisher died before queueing, a message or a retry's countdown was lost).
    for job_id in webhooks.due_deliveries(session, client):
        webhooks.queue_delivery(celery, client, job_id)
        counts["webhooks"] += 1
    return counts


def _marked(client: redis.Redis, jobs: Sequence[Job]) -> set[str]:
    """The jobs whose dispatch marker is there (one round trip for all)."""
    pipe = client.pipeline(transaction=False)
    for job in jobs:
        pipe.exists(names.dispatch_marker_key(job.id))
    return {job.id for job, found in zip(jobs, pipe.execute(), strict=True) if found}


def _stalled(
    session: Session, client: redis.Redis, jobs: Sequence[Job], now: datetime, settings: Settings
) -> set[str]:
    """Marked jobs sent over `redispatch_after_s` ago whose queue has moved past them
    (a job made after they were sent has started: queues are FIFO) or is empty in the
    broker (nothing ahead of them, yet they did not start)."""
    old = now - timedelta(seconds=settings.redispatch_after_s)
    candidates = [job for job in jobs if _sent_at(job) < old]
    found: set[str] = set()
    for queue in {job.queue for job in candidates}:
        newest_started = session.scalar(
            select(func.max(Job.created_at)).where(Job.queue == queue, Job.started_at.is_not(None))
        )
        empty = client.llen(queue) == 0  # kombu's Redis transport: one list per queue
        for job in candidates:
            if job.queue == queue and (
                empty or (newest_started is not None and as_utc(newest_started) > _sent_at(job))
            ):
                found.add(job.id)
    return found


def _sent_at(job: Job) -> datetime:
    return as_utc(job.dispatched_at or job.created_at)


def requeue_lost_run(
    session: Session,
    client: redis.Redis,
    celery: Celery,
    settings: Settings,
    job: Job,
    writer: EventWriter | None = None,
) -> str | None:
    """A running job whose runner lost its lease: `retrying` and sent again ("retried"),
    or failed once its attempts are spent ("failed"); None if someone else moved first.

    Fenced by the attempt seen, so it is safe from anyone: the reconciler, or the run
    that noticed its own lease gone (`workers/jobrun.py`), whose `writer` knows the
    event log: if Redis lost it, the log's numbering carries on from there."""
    writer = writer or EventWriter(
        client, job.id, maxlen=settings.stream_maxlen, ttl_s=settings.stream_ttl_s
    )
    if job.attempts >= settings.job_max_attempts:
        error = {
            "type": "worker_lost",
            "message": f"the worker running this job was lost {job.attempts} times",
        }
        if not transition(
            session,
            job.id,
            from_statuses=(names.RUNNING,),
            status=names.FAILED,
            attempt=job.attempts,
            error=error,
            finished_at=utcnow(),
        ):
            return None
        writer.emit("error", error)
        webhooks.after_final(session, celery, client, job.id)
        return "failed"
    # The message it ran from is spent: forget it before the job waits for a new one,
    # so a Redis that fails from here on leaves a `retrying` job the first repair above
    # re-sends (never one that looks sent and waits forever), and an unreachable one
    # changes nothing (still `running`, its lease lapsing: the second repair's case).
    client.delete(names.dispatch_marker_key(job.id))
    if not transition(
        session, job.id, from_statuses=(names.RUNNING,), status=names.RETRYING,
        attempt=job.attempts,
    ):  # fmt: skip
        return None
    log.warning("job %s: worker lost; retrying", job.id)
    writer.emit("status", {"status": names.RETRYING, "attempt": job.attempts})
    dispatch(session, celery, client, job, settings.result_ttl_s)
    return "retried"
