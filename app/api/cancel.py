"""Cancelling a job, for `POST /jobs/{id}/cancel` and for a streaming client that hangs up."""

from __future__ import annotations

import logging

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from app.core import jobs, lifecycle, names, webhooks
from app.core.config import get_settings
from app.core.errors import Conflict, Unavailable
from app.core.events import EventWriter
from app.core.models import Job, utcnow

log = logging.getLogger(__name__)


def cancel_job(
    session: Session, celery: Celery, client: redis.Redis, job_id: str, owner: str
) -> Job:
    """A queued job is revoked and marked cancelled at once; a running one is flagged and
    its worker stops within one token. A finished job is a `Conflict`.

    A waiting job is cancelled by SQL alone (a later claim loses): the event and the
    revoke are best effort, and a follower that misses the event ends with SQL's state.
    Stopping a running job needs Redis: without it the answer is `Unavailable` (503)."""
    settings = get_settings()
    job = jobs.get_owned_job(session, job_id, owner)
    if jobs.transition(
        session,
        job_id,
        from_statuses=lifecycle.WAITING,
        status=names.CANCELLED,
        finished_at=utcnow(),
    ):
        writer = EventWriter(
            client, job_id, maxlen=settings.stream_maxlen, ttl_s=settings.stream_ttl_s
        )
        try:
            writer.emit("status", {"status": names.CANCELLED, "attempt": job.attempts})
            celery.control.revoke(job_id)
        except (RedisError, OperationalError, OSError) as exc:
            log.warning("job %s cancelled; not announced or revoked (broker down): %s", job_id, exc)
        webhooks.after_final(session, celery, client, job_id)
    else:
        session.refresh(job)
        if job.status in names.TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status}", detail={"status": job.status})
        # Running: the worker sees the flag (or the message) within one token and stops.
        try:
            client.set(names.cancel_flag_key(job_id), "1", ex=settings.result_ttl_s)
            client.publish(names.cancel_channel(job_id), "cancel")
        except (RedisError, OSError) as exc:
            raise Unavailable(
                "Redis is unreachable, so the running job cannot be told to stop; try again",
                headers={"Retry-After": "2"},
            ) from exc
    session.refresh(job)
    return job
