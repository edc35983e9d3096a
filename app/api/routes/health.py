"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import Metric
from sqlalchemy import func, select, text

from app.core import metrics as worker_metrics
from app.core import names
from app.core.db import session_scope
from app.core.models import Job

router = APIRouter(tags=["health"])

QUEUE_DEPTH = Gauge("codeloop_queue_depth", "Messages waiting in a Celery queue", ["queue"])
JOBS = Gauge("codeloop_jobs", "Jobs in SQL by kind and status", ["kind", "status"])
SSE_CLIENTS = Gauge("codeloop_sse_clients", "SSE clients connected to this API process")
_WORKER_CACHE_S = 5.0


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency checked)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Redis, SQL, and at least one worker consuming each queue."""
    checks: dict[str, Any] = {}
    try:
        await request.app.state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc}"
    checks["sql"] = await run_in_threadpool(_check_sql)
    workers = await run_in_threadpool(_queue_consumers, request)
    checks["queues"] = {q: workers.get(q, 0) for q in names.QUEUES}
    ready = checks["redis"] == "ok" and checks["sql"] == "ok" and all(checks["queues"].values())
    status = 200 if ready else 503
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {"error": {"type": "unavailable", "message": "not ready", "detail": checks}},
        status_code=status,
    )


def _check_sql() -> str:
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:
        return f"error: {exc}"


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
