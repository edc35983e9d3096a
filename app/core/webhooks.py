"""Webhooks: a job's `callback_url`, the signature, and the delivery record in SQL.

A job POST may name a `callback_url`; once the job is final its JSON is POSTed there
by the maintenance worker (`workers/webhooks/`), signed, retried with backoff, and the
outcome recorded on the job row (`webhook_*` columns, `webhook` in the job JSON).

Nothing is lost if a process dies: the row says `pending` from the moment the job is
accepted, whoever makes the job final queues a delivery (`after_final`), and the
reconciler's sweep queues one for any final job still pending (`due_deliveries`).
Two deliveries of one attempt cannot both run: an attempt is claimed by a conditional
UPDATE of `webhook_attempts` (`claim_attempt`), and its outcome is written only while
the row still holds that attempt (`record_outcome`). Delivery is at least once (a
receiver may see a repeat after a crash): receivers dedupe on `X-Codeloop-Job-Id`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.core import names
from app.core.fields import SPACE_CHARS, iso_utc
from app.core.models import Job, as_utc, utcnow

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
SIGNATURE_HEADER = "X-Codeloop-Signature"
CALLBACK_URL_MAX = 2048
# What the API accepts (also published in the OpenAPI schema): http(s), a host, no
# user:password@ (it would be echoed in the job JSON), no whitespace. Whether the host
# may be reached is decided at delivery, when it is resolved.
CALLBACK_URL_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://"
    rf"(\[[0-9A-Fa-f:.]{{2,45}}\]|[^{SPACE_CHARS}/?#@\\\[\]:]+)"
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
    rf"([/?#][^{SPACE_CHARS}]*)?$"
)
_CALLBACK_URL = re.compile(CALLBACK_URL_PATTERN)
_ERROR_CHARS = 500  # the webhook_last_error column


def check_callback_url(url: str) -> str:
    """The URL if the API may accept it; ValueError (a 422) saying why not."""
    if len(url) > CALLBACK_URL_MAX:
        raise ValueError(f"callback_url must be at most {CALLBACK_URL_MAX} characters")
    if not _CALLBACK_URL.fullmatch(url):  # not match: `$` would let a final "\n" through
        raise ValueError(
            "callback_url must be an http:// or https:// URL with a host "
            "(no credentials, no whitespace)"
        )
    return url


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`X-Codeloop-Signature`: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def webhook_json(job: Job) -> dict[str, Any] | None:
    """What the job JSON shows of its webhook (never the secret), None without one."""
    if job.callback_url is None:
        return None
    return {
        "url": job.callback_url,
        "status": job.webhook_status,
        "attempts": job.webhook_attempts or 0,
        "last_status_code": job.webhook_last_status_code,
        "last_error": job.webhook_last_error,
        "next_attempt_at": iso_utc(job.webhook_next_at) if job.webhook_status == PENDING else None,
        "delivered_at": iso_utc(job.webhook_delivered_at),
    }


# --- queueing a delivery ----------------------------------------------------------------


def queue_delivery(
    celery: Celery, client: redis.Redis, job_id: str, *, countdown: float | None = None
) -> None:
    """Send the delivery task, then the marker that keeps the sweep from queueing a
    second (in that order, as for jobs: a failed send must leave no marker behind)."""
    hold_s = int((countdown or 0) + 600)
    celery.send_task(
        names.TASK_DELIVER_WEBHOOK,
        args=[job_id],
        queue=names.QUEUE_MAINTENANCE,
        countdown=countdown,
        ignore_result=True,
    )
    client.set(names.webhook_queued_key(job_id), "1", ex=hold_s)


def after_final(session: Session, celery: Celery, client: redis.Redis, job_id: str) -> None:
    """Called by whoever just made the job final: queue its webhook if it has one.

    Best effort: with the broker away the row stays `pending` and the reconciler's
    sweep queues it later."""
    pending = session.scalar(select(Job.id).where(Job.id == job_id, Job.webhook_status == PENDING))
    if pending is None:
        return
    try:
        queue_delivery(celery, client, job_id)
    except (redis.RedisError, OperationalError, OSError) as exc:
        log.warning("job %s: webhook not queued yet (%s); the reconciler will", job_id, exc)


def due_deliveries(session: Session, client: redis.Redis, *, limit: int = 200) -> list[str]:
    """Final jobs whose webhook is pending and due, with no delivery already queued."""
    now = utcnow()
    settled = now - timedelta(seconds=2)  # the finisher's own queueing goes first
    rows = session.scalars(
        select(Job.id)
        .where(
            Job.webhook_status == PENDING,
            Job.status.in_(sorted(names.TERMINAL)),
            Job.finished_at < settled,
            or_(Job.webhook_next_at.is_(None), Job.webhook_next_at <= now),
        )
        .order_by(Job.finished_at)
        .limit(limit)
    ).all()
    return [job_id for job_id in rows if not client.exists(names.webhook_queued_key(job_id))]


# --- one attempt's life in SQL ----------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """An attempt this caller owns: its number, and the job as it was claimed."""

    attempt: int
    job: Job


def claim_attempt(session: Session, job_id: str, *, hold_s: float) -> Claim | None:
    """Take the next attempt of a final job's pending webhook, if it is due.

    The row's `webhook_next_at` moves `hold_s` ahead, so if this process dies mid-
    attempt the sweep retries once that passes; a second claimant loses the UPDATE."""
    job = session.get(Job, job_id)
    if job is None or job.webhook_status != PENDING or job.status not in names.TERMINAL:
        return None
    now = utcnow()
    due = job.webhook_next_at
    if due is not None and as_utc(due) > now:
        return None
    seen = job.webhook_attempts or 0
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.webhook_status == PENDING, Job.webhook_attempts == seen)
        .values(webhook_attempts=seen + 1, webhook_next_at=now + timedelta(seconds=hold_s))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    session.refresh(job)
    return Claim(seen + 1, job)


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended. `retry_in` set: try again after it (None: final)."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None
    retry_in: float | None = None


def record_outcome(session: Session, job_id: str, attempt: int, outcome: Outcome) -> bool:
    """Write the attempt's outcome, fenced by its number; False if it was taken over."""
    now = utcnow()
    values: dict[str, Any] = {
        "webhook_last_status_code": outcome.status_code,
        "webhook_last_error": outcome.error[:_ERROR_CHARS] if outcome.error else None,
    }
    if outcome.delivered:
        values.update(webhook_status=DELIVERED, webhook_delivered_at=now, webhook_next_at=None)
    elif outcome.retry_in is not None:
        values.update(webhook_next_at=now + timedelta(seconds=outcome.retry_in))
    else:
        values.update(webhook_status=FAILED, webhook_next_at=None)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.webhook_status == PENDING, Job.webhook_attempts == attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def backoff_s(attempt: int, *, base_s: float, max_s: float) -> float:
    """Delay before the attempt after `attempt` (1-based): base, 2x base, 4x base ..."""
    return float(min(max_s, base_s * 2 ** max(0, attempt - 1)))
