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

from app.api.errors import error_responses
from app.api.quotas import Quotas
from app.api.schemas import JobOut
from app.core import jobs
from app.core.config import get_settings
from app.core.errors import BadRequest
from app.core.models import Job

log = logging.getLogger(__name__)
IDEMPOTENCY_KEY_MAX = 200

_LOCATION = {
    "Location": {"description": "`/jobs/{id}`", "schema": {"type": "string"}, "required": True}
}
# The `responses=` of every job POST (a route adds what only it answers, e.g. 409).
JOB_POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": JobOut, "description": "accepted: the new job", "headers": _LOCATION},
    200: {
        "model": JobOut,
        "description": "a repeated `Idempotency-Key`: the first job",
        "headers": _LOCATION,
    },
    **error_responses(400, 401, 413, 422, 429, 503),
}


def submit_job(
    request: Request,
    session: Session,
    *,
    kind: str,
    owner: str,
    workspace: str,
    body: dict[str, Any],
) -> tuple[Job, bool]:
    """Create and dispatch a job; (job, created). A repeat idempotency key returns the first.

    `workspace` is the caller's (`Caller.workspace`): the memory the job may use.
    The body's `callback_url` (checked by its schema) is kept apart from the request the
    worker runs: it goes on the job row, which POSTs it the final job (app/core/webhooks.py)."""
    settings = get_settings()
    body = dict(body)
    callback_url = body.pop("callback_url", None)
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= IDEMPOTENCY_KEY_MAX):
        raise BadRequest(f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} characters")
    repeat = key is not None and session.scalar(
        select(Job.id).where(Job.owner == owner, Job.idempotency_key == key)
    )
    if not repeat:  # a repeat returns its first job, whatever the quotas say now
        quotas: Quotas = request.app.state.quotas
        quotas.admit_job(session, owner=owner, kind=kind)
    job, created = jobs.create_job(
        session, kind=kind, owner=owner, request=body, idempotency_key=key, workspace=workspace,
        callback_url=callback_url,
    )  # fmt: skip
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
