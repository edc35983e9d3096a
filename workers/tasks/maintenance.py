"""Maintenance jobs (queue `maintenance`): the reconciler and a ping for health checks."""

from __future__ import annotations

import time

from app.core import names
from app.core.config import get_settings
from app.core.db import session_scope
from workers.celery_app import celery_app
from workers.reconcile import reconcile_once
from workers.runtime import get_redis


@celery_app.task(name=names.TASK_RECONCILE, ignore_result=True, expires=60)
def reconcile() -> dict[str, int]:
    with session_scope() as session:
        return reconcile_once(session, get_redis(), celery_app, get_settings())


@celery_app.task(name=names.TASK_PING)
def ping() -> float:
    """Round-trip probe: `codeloop bench` and readiness checks."""
    return time.time()
