"""The reconciler: no accepted job is ever lost.

Run by beat every `reconcile_interval_s`. Three repairs:
- a `queued`/`retrying` job whose dispatch marker is gone had its message lost with
  Redis' data (a restart without persistence, a flush): send it again;
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
from datetime import timedelta

import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import names, webhooks
from app.core.config import Settings
from app.core.events import EventWriter
from app.core.jobs import dispatch, transition
from app.core.models import Job, utcnow

log = logging.getLogger(__name__)


def reconcile_once(
    session: Session, client: redis.Redis, celery: Celery, settings: Settings
) -> dict[str, int]:
    counts = {"resent": 0, "retried": 0, "failed": 0, "webhooks": 0}
    now = utcnow()
    # A message is sent right after its row commits; give that a moment before judging.
    settled = now - timedelta(seconds=max(2.0, settings.lease_ttl_s))
    waiting = session.scalars(
        select(Job).where(Job.status.in_([names.QUEUED, names.RETRYING]), Job.updated_at < settled)
    ).all()
    for job in waiting:
        if not client.exists(names.dispatch_marker_key(job.id)):
            log.warning("job %s: message lost; sending it again", job.id)
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
