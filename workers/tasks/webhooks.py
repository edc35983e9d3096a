"""Webhook deliveries (queue `maintenance`): one task per attempt.

Queued by whoever makes a job final, by the reconciler's sweep for any final job whose
webhook is still pending, and by a failed attempt for its own retry (with a countdown).
Any of those may be lost (Redis restarted, the process died): the row stays `pending`
and the sweep queues it again once it is due.
"""

from __future__ import annotations

import contextlib
import logging

import redis
from kombu.exceptions import OperationalError

from app.core import names, webhooks
from app.core.config import get_settings
from workers.celery_app import celery_app
from workers.runtime import get_redis
from workers.webhooks.deliver import deliver_once, hold_s

log = logging.getLogger(__name__)
_settings = get_settings()


@celery_app.task(
    name=names.TASK_DELIVER_WEBHOOK,
    ignore_result=True,
    soft_time_limit=hold_s(_settings) - 10,
    time_limit=hold_s(_settings) - 5,
)
def deliver_webhook(job_id: str) -> None:
    client = get_redis()
    with contextlib.suppress(redis.RedisError):
        client.delete(names.webhook_queued_key(job_id))  # from here on, the sweep may queue it
    settings = get_settings()
    done = deliver_once(job_id, settings)
    if done is None:
        return
    _attempt, outcome = done
    if outcome.retry_in is not None:
        try:
            webhooks.queue_delivery(celery_app, client, job_id, countdown=outcome.retry_in)
        except (redis.RedisError, OperationalError, OSError) as exc:
            log.warning("job %s: webhook retry not queued (%s); the reconciler will", job_id, exc)
