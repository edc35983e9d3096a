"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import Metric
from sqlalchemy import func, select, text

from app.api.errors import error_responses
from app.core import metrics as worker_metrics
from app.core import names
from app.core.db import session_scope
from app.core.models import Job

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

QUEUE_DEPTH = Gauge("codeloop_queue_depth", "Messages waiting in a Celery queue", ["queue"])
JOBS = Gauge("codeloop_jobs", "Jobs in SQL by kind and status", ["kind", "status"])
SSE_CLIENTS = Gauge("codeloop_sse_clients", "SSE clients connected to this API process")
_WORKER_CACHE_S = 5.0


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency checked)."""
    return {"status": "ok"}


READY_CHECK_TIMEOUT_S = 3.0


@router.get(
    "/readyz",
    responses={
        200: {"description": '`{"status": "ready", "checks": {name: "ok"}}`'},
        **error_responses(
            503, notes={503: "the error shape; `detail` is `{status, checks}`, each ok|down"}
        ),
    },
)
async def readyz(request: Request) -> JSONResponse:
    """Redis, SQL, and at least one worker consuming each queue: each check `ok` or
    `down`. Unauthenticated, so why a check is down goes to the log, never here."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(request.app.state.redis.ping(), READY_CHECK_TIMEOUT_S)
        checks["redis"] = "ok"
    except Exception:
        log.warning("readyz: Redis is down", exc_info=True)
        checks["redis"] = "down"
    checks["sql"] = await run_in_threadpool(_check_sql)
    workers = await run_in_threadpool(_queue_consumers, request)
    for queue in names.QUEUES:
        checks[f"queue:{queue}"] = "ok" if workers.get(queue, 0) else "down"
    down = [name for name, state in checks.items() if state != "ok"]
    if not down:
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {"error": {"type": "unavailable", "message": f"not ready: {', '.join(down)} down",
                   "detail": {"status": "not_ready", "checks": checks}}},
        status_code=503,
    )  # fmt: skip


def _check_sql() -> str:
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
        return "ok"
    except Exception:
        log.warning("readyz: SQL is down", exc_info=True)
        return "down"


def _queue_consumers(request: Request) -> dict[str, int]:
    """Workers per queue, from a broadcast `inspect` (cached: it costs a second)."""
    state = request.app.state
    cached = getattr(state, "queue_consumers", None)
    if cached and time.monotonic() - cached[0] < _WORKER_CACHE_S:
        return cached[1]
    counts: dict[str, int] = {}
    try:
        replies = state.celery.control.inspect(timeout=1.0).active_queues() or {}
    except Exception:
        replies = {}
    for queues in replies.values():
        for queue in queues:
            counts[queue["name"]] = counts.get(queue["name"], 0) + 1
    state.queue_consumers = (time.monotonic(), counts)
    return counts


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    client = request.app.state.redis
    for queue in names.QUEUES:
        try:
            QUEUE_DEPTH.labels(queue).set(await client.llen(queue))
        except Exception:
            continue
    for (kind, status), count in await run_in_threadpool(_job_counts):
        JOBS.labels(kind, status).set(count)
    SSE_CLIENTS.set(request.app.state.hub.client_count)
    try:  # the workers' figures, cluster-wide (app/core/metrics.py)
        raw = await client.hgetall(names.METRICS_KEY)
    except Exception:
        raw = {}
    workers = CollectorRegistry(auto_describe=False)
    workers.register(_Families(list(worker_metrics.families(raw))))
    body = generate_latest() + generate_latest(workers)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class _Families:
    """Metric families read once for this scrape, served as a collector."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _job_counts() -> list[tuple[tuple[str, str], int]]:
    with session_scope() as session:
        rows = session.execute(
            select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
        ).all()
    return [((kind, status), int(count)) for kind, status, count in rows]
