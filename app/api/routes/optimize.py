"""`/optimize/retriever` and `/optimize/generation`: trigger and watch the tuners.

`POST /optimize/retriever` is an `optimize` job on the maintenance queue; its events
include a `progress` per trial. A second request while a study runs (a job, or beat's
run holding the tuning lock) is a 409 that names it; two requests racing past this
check are still kept apart by the worker's Redis lock (the loser fails with `conflict`).
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field
from redis.exceptions import RedisError
from sqlalchemy import select

from app.api.deps import CallerDep, OwnerDep, SessionDep
from app.api.errors import error_responses
from app.api.schemas import JSON_INTEGER, CallbackUrl, StrictBody
from app.api.submit import JOB_POST_RESPONSES, job_response, submit_job
from app.core import names
from app.core.config import Settings, get_settings
from app.core.errors import Conflict, InvalidInput
from app.core.models import Job
from app.core.tuning import generation_overview, open_optimize_job, retriever_overview

router = APIRouter(
    prefix="/optimize", tags=["tuning"], responses=error_responses(401, 422, 429, 503)
)

MAX_TRIALS = 500


class OptimizeRetrieverRequest(StrictBody):
    n_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS), JSON_INTEGER] | None = None
    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    recall_target: float | None = Field(default=None, ge=0.5, le=1.0, allow_inf_nan=False)
    callback_url: CallbackUrl | None = None

    @classmethod
    def caps(cls, settings: Settings) -> dict[str, dict[str, Any]]:
        return {"timeout_s": {"maximum": timeout_cap_s(settings)}}


def timeout_cap_s(settings: Settings) -> int:
    """A study's longest timeout: the task's soft time limit less a minute."""
    return settings.tune_soft_time_limit_s - 60


@router.post(
    "/retriever",
    status_code=202,
    responses={**JOB_POST_RESPONSES, **error_responses(409)},
)
def optimize_retriever(
    body: OptimizeRetrieverRequest, request: Request, session: SessionDep, caller: CallerDep
) -> JSONResponse:
    """Tune the retriever's HNSW parameters now (an `optimize` job with `progress` events)."""
    settings = get_settings()
    cap = timeout_cap_s(settings)
    if body.timeout_s is not None and body.timeout_s > cap:
        raise InvalidInput(
            f"timeout_s must be at most {cap} (the task's soft time limit less a minute)",
            detail={"field": "timeout_s", "max": cap},
        )
    key = request.headers.get("idempotency-key")
    repeat = key is not None and session.scalar(
        select(Job.id).where(Job.owner == caller.owner, Job.idempotency_key == key)
    )
    running = None if repeat else open_optimize_job(session)  # a repeat gets its first job
    if running is not None:
        raise Conflict(
            f"a retriever study is already running: job {running.id}",
            detail={"job_id": running.id, "status": running.status,
                    "links": {"self": f"/jobs/{running.id}"}},
        )  # fmt: skip
    holder = None
    with contextlib.suppress(RedisError):
        raw = request.app.state.redis_sync.get(names.TUNE_RETRIEVER_LOCK)
        holder = raw.decode() if isinstance(raw, bytes) else raw
    if holder is not None and not repeat:
        raise Conflict(f"a retriever study is already running ({holder})",
                       detail={"holder": holder})  # fmt: skip
    job, created = submit_job(
        request, session, kind="optimize", owner=caller.owner, workspace=caller.workspace,
        body=body.model_dump(exclude_none=True),
    )  # fmt: skip
    return job_response(session, job, created)


@router.get("/retriever")
def get_retriever_tuning(
    request: Request,
    session: SessionDep,
    _owner: OwnerDep,
    limit: int = Query(default=10, ge=1, le=100),
) -> dict[str, Any]:
    """The configuration in force (version, params, since, by which study), recent studies."""
    overview = retriever_overview(session, limit=limit)
    overview["running_lock"] = overview["last_beat_run"] = None
    with contextlib.suppress(RedisError):
        client = request.app.state.redis_sync
        holder, last = client.mget(names.TUNE_RETRIEVER_LOCK, names.TUNE_LAST_BEAT_RUN)
        overview["running_lock"] = holder.decode() if isinstance(holder, bytes) else holder
        overview["last_beat_run"] = json.loads(last) if last else None
    return overview


@router.get("/generation")
def get_generation_tuning(
    session: SessionDep, _owner: OwnerDep, recent: int = Query(default=10, ge=0, le=100)
) -> dict[str, Any]:
    """Each language's sampling study: trials, the default in force, best and recent trials."""
    return generation_overview(session, get_settings(), recent=recent)
