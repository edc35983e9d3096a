"""`/jobs`: read, list, long-poll, cancel and follow any job."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse

from app.api.cancel import cancel_job as request_cancel
from app.api.deps import (
    AsyncRedisDep,
    EventsOwnerDep,
    HubDep,
    OwnerDep,
    QuickRedisDep,
    RedisDep,
    SessionDep,
)
from app.api.errors import error_responses
from app.api.event_hub import SUBSCRIBE_TIMEOUT_S
from app.api.schemas import JobKind, JobList, JobOut, JobStatus
from app.api.sse import (
    EVENT_STREAM_CONTENT,
    parse_last_event_id,
    relay_events,
    sse_response,
    stored_final_event,
)
from app.core import jobs, names
from app.core.db import session_scope
from app.core.models import Job

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"], responses=error_responses(401, 422, 429, 503))
POLL_S = 0.5  # how often a long-poll without Redis re-reads SQL
SQL_RECHECK_S = 2.0  # how often a long-poll on events re-reads SQL anyway
WAIT_CAP_S = 30.0


def read_job(session: Any, client: Any, job: Job) -> dict[str, Any]:
    """The job JSON; live progress from Redis when it answers, else SQL's (never a 5xx)."""
    tokens = None
    if job.kind == "generate" and job.status in (names.RUNNING, names.RETRYING):
        try:
            raw = client.get(names.progress_key(job.id))
        except (RedisError, OSError) as exc:
            log.warning("job %s: progress unavailable (%s); SQL's figure instead", job.id, exc)
            raw = None
        tokens = int(raw) if raw else None
    return jobs.job_to_json(
        job, queue_position=jobs.queue_position(session, job), progress_tokens=tokens
    )


@router.get(
    "",
    response_model=None,
    responses={200: {"model": JobList}, **error_responses(400, notes={400: "invalid cursor"})},
)
def list_jobs(
    session: SessionDep,
    owner: OwnerDep,
    kind: JobKind | None = None,
    status: JobStatus | None = None,
    limit: int = Query(default=20, ge=1, le=100),
    cursor: str | None = Query(  # checked by jobs.decode_cursor: a bad one is a 400
        default=None,
        json_schema_extra={"pattern": jobs.CURSOR_PATTERN},
        description="`next_cursor` of the page before",
    ),
) -> dict[str, Any]:
    rows, next_cursor = jobs.list_jobs(
        session, owner=owner, kind=kind, status=status, limit=limit, cursor=cursor
    )
    return {"items": [jobs.job_to_json(j) for j in rows], "next_cursor": next_cursor}


@router.get(
    "/{job_id}",
    response_model=None,
    responses={200: {"model": JobOut}, **error_responses(404)},
)
async def get_job(
    job_id: str,
    owner: OwnerDep,
    hub: HubDep,
    client: QuickRedisDep,  # progress only: SQL has a figure when Redis does not answer
    wait: float = Query(
        default=0,
        ge=0,
        description=f"long-poll for a final state, up to {WAIT_CAP_S} s (longer is cut to that)",
    ),
) -> dict[str, Any]:
    def load() -> dict[str, Any]:
        with session_scope() as session:
            return read_job(session, client, jobs.get_owned_job(session, job_id, owner))

    body = await run_in_threadpool(load)
    wait = min(wait, WAIT_CAP_S)
    if wait <= 0 or body["status"] in names.TERMINAL:
        return body
    deadline = time.monotonic() + wait
    try:
        return await _wait_with_events(hub, job_id, load, deadline)
    except (RedisError, OSError, TimeoutError) as exc:  # no live events: SQL still answers
        log.warning("job %s: long-poll without events (%s); polling SQL", job_id, exc)
    body = await run_in_threadpool(load)
    while body["status"] not in names.TERMINAL and time.monotonic() < deadline:
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        body = await run_in_threadpool(load)
    return body


async def _wait_with_events(hub: Any, job_id: str, load: Any, deadline: float) -> dict[str, Any]:
    """Long-poll on the job's live events: re-read SQL when a terminal event passes.
    A subscription Redis does not confirm by the deadline is given up (TimeoutError)."""
    confirm_s = max(0.1, min(SUBSCRIBE_TIMEOUT_S, deadline - time.monotonic()))
    async with hub.subscribe(job_id, timeout=confirm_s) as sub:
        body = await run_in_threadpool(load)  # subscribed now: no terminal event can slip by
        while body["status"] not in names.TERMINAL:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = await sub.get(timeout=min(remaining, SQL_RECHECK_S))
            except TimeoutError:
                item = None  # re-read SQL now and then: a final event may have been lost
            if isinstance(item, list) and not any(event.is_terminal for event, _ in item):
                continue
            body = await run_in_threadpool(load)
    return body


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    responses={202: {"model": JobOut}, **error_responses(404, 409)},
)
def cancel_job(
    job_id: str, session: SessionDep, owner: OwnerDep, client: RedisDep, request: Request
) -> JSONResponse:
    job = request_cancel(session, request.app.state.celery, client, job_id, owner)
    return JSONResponse(read_job(session, client, job), status_code=202)


@router.get(
    "/{job_id}/events",
    response_class=Response,  # no JSON 200: the body is the stream
    responses={
        200: {"content": EVENT_STREAM_CONTENT, "description": "the job's events"},
        **error_responses(
            401, 404, notes={401: "no key, or an events token that is invalid or expired"}
        ),
    },
)
async def job_events(
    job_id: str,
    owner: EventsOwnerDep,  # a Bearer key, or ?token= from POST /jobs/{id}/events-token
    hub: HubDep,
    client: AsyncRedisDep,
    last_event_id_header: str | None = Header(default=None, alias="Last-Event-ID"),
    last_event_id: str | None = Query(default=None, max_length=20),
) -> EventSourceResponse:
    await run_in_threadpool(_check_owner, job_id, owner)
    start = parse_last_event_id(last_event_id_header, last_event_id)
    return sse_response(follow(hub, client, job_id, start))


def _check_owner(job_id: str, owner: str) -> None:
    with session_scope() as session:
        jobs.get_owned_job(session, job_id, owner)


def follow(hub: Any, client: Any, job_id: str, start: int) -> Any:
    return relay_events(hub, client, job_id, start, stored_final_event(job_id))
