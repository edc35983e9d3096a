"""`POST /generate_code`: a generation job, answered as JSON (202) or as its SSE stream."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.api.deps import AsyncRedisDep, CallerDep, HubDep
from app.api.routes.jobs import follow
from app.api.schemas import GenerateRequest
from app.api.sse import EVENT_STREAM_CONTENT, sse_response
from app.api.submit import JOB_POST_RESPONSES, job_response, submit_job
from app.core.db import session_scope

router = APIRouter(tags=["generate"])


@router.post(
    "/generate_code",
    status_code=202,
    responses={
        **JOB_POST_RESPONSES,
        200: {
            **JOB_POST_RESPONSES[200],
            "description": "a repeated `Idempotency-Key` (the first job), or, when streaming, "
            "the job's events (job id in `X-Job-Id`)",
            "content": EVENT_STREAM_CONTENT,
        },
    },
)
async def generate_code(
    body: GenerateRequest, request: Request, caller: CallerDep, hub: HubDep, client: AsyncRedisDep
) -> Response:
    """Queue a generation. With `"stream": true` (or `Accept: text/event-stream`) the
    answer is the job's event stream itself, with the job id in `X-Job-Id`."""

    def submit() -> tuple[Response, str]:
        with session_scope() as session:
            job, created = submit_job(
                request, session, kind="generate", owner=caller.owner,
                workspace=caller.workspace, body=body.job_request(),
            )  # fmt: skip
            return job_response(session, job, created), job.id

    response, job_id = await run_in_threadpool(submit)
    wants_stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
    if not wants_stream:
        return response
    return sse_response(
        follow(hub, client, job_id, 0),
        headers={"X-Job-Id": job_id, "Location": f"/jobs/{job_id}"},
    )
