"""Accepting a job: write the row, then send the message (never the other way round)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import jobs
from app.core.config import get_settings
from app.core.errors import BadRequest, TooManyRequests
from app.core.models import Job

log = logging.getLogger(__name__)
IDEMPOTENCY_KEY_MAX = 200


def submit_job(
    request: Request, session: Session, *, kind: str, owner: str, body: dict[str, Any]
) -> tuple[Job, bool]:
    """Create and dispatch a job; (job, created). A repeat idempotency key returns the first."""
    settings = get_settings()
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= IDEMPOTENCY_KEY_MAX):
        raise BadRequest(f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} characters")
    repeat = key is not None and session.scalar(
        select(Job.id).where(Job.owner == owner, Job.idempotency_key == key)
    )
    if not repeat and jobs.count_open_jobs(session, owner) >= settings.max_queued_jobs_per_owner:
        raise TooManyRequests(
            f"at most {settings.max_queued_jobs_per_owner} jobs may wait at once",
            headers={"Retry-After": "5"},
        )
    job, created = jobs.create_job(
        session, kind=kind, owner=owner, request=body, idempotency_key=key
    )
    if created:
        try:
            jobs.dispatch(
                session,
                request.app.state.celery,
                request.app.state.redis_sync,
                job,
                settings.result_ttl_s,
            )
        except (OperationalError, RedisError, OSError) as exc:
            # The row is committed, so the job is accepted: the reconciler sends it
            # once the broker answers again.
            log.warning("job %s accepted but not sent yet: %s", job.id, exc)
    return job, created


def job_response(session: Session, job: Job, created: bool) -> JSONResponse:
    body = jobs.job_to_json(job, queue_position=jobs.queue_position(session, job))
    return JSONResponse(
        body, status_code=202 if created else 200, headers={"Location": f"/jobs/{job.id}"}
    )
