"""Search jobs (queue `search`, apart from generation so a search never waits behind one)."""

from __future__ import annotations

from typing import Any

from app.core import names
from workers.celery_app import celery_app
from workers.jobrun import JobContext, run_job


def warm_up() -> None:
    """Load the embedder and the index replica before the first search arrives."""
    from workers.retrieval import service

    service.warm_up()


@celery_app.task(
    name=names.TASK_SEARCH,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=60,
    time_limit=90,
)
def search(job_id: str) -> None:
    run_job(job_id, run_search)


def run_search(ctx: JobContext) -> dict[str, Any]:
    from workers.retrieval import service

    return service.search(ctx.request)
