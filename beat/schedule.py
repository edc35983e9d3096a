"""Celery beat's schedule. Exactly one beat runs: `celery -A workers.celery_app beat`.

(A second beat by mistake doubles the reconciler's work and would fire the tuner twice;
the tuning lock makes the second tuner run a no-op, but run one beat.)
"""

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
        # Skips by itself unless the corpus grew TUNE_MIN_GROWTH since the last study.
        "tune-retriever": {
            "task": names.TASK_TUNE_RETRIEVER,
            "schedule": settings.tune_interval_s,
            "options": {"queue": names.QUEUE_MAINTENANCE, "expires": settings.tune_interval_s},
        },
        "tell-generation-trials": {
            "task": names.TASK_TELL_GENERATION,
            "schedule": settings.tune_generation_interval_s,
            "options": {
                "queue": names.QUEUE_MAINTENANCE,
                "expires": settings.tune_generation_interval_s,
            },
        },
    }
