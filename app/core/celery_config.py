"""Celery settings shared by the workers and by the API's producer.

Time limits nest as the broker needs them to: soft < hard < visibility timeout, so a
message is never handed to a second worker while the first may still be running it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.core import names
from app.core.config import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    assert settings.generate_soft_time_limit_s < settings.generate_time_limit_s
    assert settings.generate_time_limit_s < settings.broker_visibility_timeout_s
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": settings.result_ttl_s,
        "task_track_started": True,
        "task_routes": {task: {"queue": queue} for task, queue in names.TASK_QUEUES.items()},
        "task_default_queue": names.QUEUE_MAINTENANCE,
        "worker_prefetch_multiplier": 1,
        # A pool process loads the LLM and the embedder before it reports up (the bundled
        # model's first conversion takes ~30 s); Celery's 4 s default would kill it and
        # start another, forever.
        "worker_proc_alive_timeout": 300,
        "broker_transport_options": {"visibility_timeout": settings.broker_visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "enable_utc": True,
    }


def make_producer(settings: Settings) -> Celery:
    """A Celery app that only sends tasks by name (what the API holds).

    Its broker commands time out (kombu sets none), and a send is retried once: a
    request never waits long on a Redis that went away, and a job whose send failed
    is committed already, so the reconciler sends it (workers/reconcile.py)."""
    app = Celery("codeloop-api")
    config = celery_config(settings)
    config["broker_transport_options"] = {
        **config["broker_transport_options"],
        "socket_timeout": PUBLISH_TIMEOUT_S,
        "socket_connect_timeout": PUBLISH_TIMEOUT_S,
    }
    config["task_publish_retry_policy"] = {
        "max_retries": 1, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 0.2,
    }  # fmt: skip
    app.conf.update(config)
    return app


PUBLISH_TIMEOUT_S = 2.0  # one LPUSH: milliseconds when Redis is there
