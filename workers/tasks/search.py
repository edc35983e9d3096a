"""Search jobs (queue `search`, apart from generation so a search never waits behind one)."""

from __future__ import annotations

from typing import Any

from app.core import names
from workers.jobrun import JobContext, job_task


def warm_up() -> None:
    """Load the embedder and the index replica before the first search arrives."""
    from workers.retrieval import service

    service.warm_up()


def run_search(ctx: JobContext) -> dict[str, Any]:
    from workers.retrieval import service

    return service.search(ctx.request, workspace=ctx.workspace)


search = job_task(names.TASK_SEARCH, run_search, soft_time_limit=60, time_limit=90)
