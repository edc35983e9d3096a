"""Celery beat's schedule. Exactly one beat runs: `celery -A workers.celery_app beat`."""

from __future__ import annotations

from typing import Any

from app.core import names
from app.core.config import Settings


def beat_schedule(settings: Settings) -> dict[str, Any]:
    return {
        "reconcile-jobs": {
            "task": names.TASK_RECONCILE,
            "schedule": settings.reconcile_interval_s,
            "options": {"queue": names.QUEUE_MAINTENANCE, "expires": 60},
        },
    }
