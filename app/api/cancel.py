"""Cancelling a job, for `POST /jobs/{id}/cancel` and for a streaming client that hangs up."""

from __future__ import annotations

import redis
from celery import Celery
from sqlalchemy.orm import Session

from app.core import jobs, names
from app.core.config import get_settings
from app.core.errors import Conflict
from app.core.events import EventWriter
from app.core.models import Job, utcnow


def cancel_job(
    session: Session, celery: Celery, client: redis.Redis, job_id: str, owner: str
) -> Job:
    """A queued job is revoked and marked cancelled at once; a running one is flagged and
    its worker stops within one token. A finished job is a `Conflict`."""
    settings = get_settings()
    job = jobs.get_owned_job(session, job_id, owner)
    if jobs.transition(
        session,
        job_id,
        from_statuses=(names.QUEUED, names.RETRYING),
        status=names.CANCELLED,
        finished_at=utcnow(),
    ):
        celery.control.revoke(job_id)
        writer = EventWriter(
            client, job_id, maxlen=settings.stream_maxlen, ttl_s=settings.stream_ttl_s
        )
        writer.emit("status", {"status": names.CANCELLED, "attempt": job.attempts})
    else:
        session.refresh(job)
        if job.status in names.TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status}", detail={"status": job.status})
        # Running: the worker sees the flag (or the message) within one token and stops.
        client.set(names.cancel_flag_key(job_id), "1", ex=settings.result_ttl_s)
        client.publish(names.cancel_channel(job_id), "cancel")
    session.refresh(job)
    return job
