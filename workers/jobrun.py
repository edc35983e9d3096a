"""Running one job inside a worker: lease, claim, cancel watch, final state.

A job may be delivered more than once (a lost worker's message is re-queued, the
reconciler re-sends, the broker redelivers). Exactly one delivery runs it: the one that
holds the job's Redis *lease* (`workers/lease.py`). Every write of a run is fenced: SQL
by its attempt, events by its lease token; a run whose lease is lost stops and writes
nothing (the reconciler re-sends the job). A run that cannot reach Redis (its events
undeliverable through the pump's retries) cannot hold its lease either: it is lost the
same way, never `failed` for what was only the network.

Final states are written to SQL first, then announced as events, so a client that
sees `done` can always read the finished job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import SQLAlchemyError

from app.core import metrics, names, webhooks
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.events import EventWriter, Fenced
from app.core.jobs import transition
from app.core.models import Job, utcnow
from workers.event_pump import EventPump, EventPumpError
from workers.lease import Lease
from workers.runtime import get_redis, worker_identity

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """A handler's expected failure: becomes the job's `error` with this type."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message


@dataclass
class JobContext:
    """What a handler gets: the request, the attempt, a way to emit events, a cancel flag."""

    job_id: str
    kind: str
    owner: str
    workspace: str  # the memory this job may read and write (the owner's workspace)
    request: dict[str, Any]
    attempt: int
    queued_at: Any
    events: EventWriter
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Set once this run's lease is gone: it stops and writes nothing more.
    lost: threading.Event = field(default_factory=threading.Event)
    pump: EventPump | None = None
    deferred: list[Callable[[], None]] = field(default_factory=list)
    # For /metrics (app/core/metrics.py): when the handler started, when each token left.
    claimed_at: Any = field(default_factory=utcnow)
    started: float = field(default_factory=time.perf_counter)
    token_times: list[float] = field(default_factory=list)

    def defer(self, fn: Callable[[], None]) -> None:
        """Run `fn` after the job's final state is announced (work the client needn't wait for)."""
        self.deferred.append(fn)

    def emit(self, type_: str, data: dict[str, Any], *, progress_tokens: int | None = None) -> None:
        """Queue an event; it reaches Redis in order, without blocking the caller."""
        if type_ == "token":
            self.token_times.append(time.perf_counter())
        if self.pump is None:
            self.pump = EventPump(self.events, name=f"events-{self.job_id[:8]}")
        self.pump.put(type_, data, progress_tokens)

    def flush(self) -> None:
        if self.pump is not None:
            self.pump.flush()

    def close(self) -> None:
        if self.pump is not None:
            self.pump.close()


def _writer(client: redis.Redis, job_id: str, lease: Lease) -> EventWriter:
    settings = get_settings()
    return EventWriter(
        client, job_id, maxlen=settings.stream_maxlen, ttl_s=settings.stream_ttl_s,
        lease_token=lease.token,
    )  # fmt: skip


def _claim(
    client: redis.Redis, job_id: str, lease: Lease, cancelled: threading.Event
) -> JobContext | None:
    settings = get_settings()
    writer = _writer(client, job_id, lease)
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s: no such row; message dropped", job_id)
            return None
        if job.status in names.TERMINAL:
            return None
        previous, attempt = job.status, job.attempts + 1
        if previous == names.RUNNING:  # its last runner died without finishing
            writer.emit("status", {"status": names.RETRYING, "attempt": job.attempts})
        if attempt > settings.job_max_attempts:
            error = {
                "type": "worker_lost",
                "message": f"the worker running this job was lost {job.attempts} times",
            }
            if transition(
                session,
                job_id,
                from_statuses=(previous,),
                status=names.FAILED,
                attempt=job.attempts,
                error=error,
                finished_at=utcnow(),
            ):
                writer.unfenced().emit("error", error)
                _queue_webhook(client, job_id)
            return None
        won = transition(
            session,
            job_id,
            from_statuses=(previous,),
            status=names.RUNNING,
            attempt=job.attempts,  # the attempt seen: two claims cannot both win
            attempts=attempt,
            started_at=job.started_at or utcnow(),
            worker=worker_identity(),
        )
        if not won:
            return None
        ctx = JobContext(
            job_id=job_id,
            kind=job.kind,
            owner=job.owner,
            workspace=job.workspace_id,
            request=dict(job.request),
            attempt=attempt,
            queued_at=job.created_at,
            events=writer,
            cancelled=cancelled,
            lost=lease.lost,
        )
    writer.emit("status", {"status": names.RUNNING, "attempt": attempt})
    return ctx


def _finish(ctx: JobContext, status: str, **values: Any) -> bool:
    """Write the final state, fenced by this run's attempt; False if the job is not ours."""
    if ctx.lost.is_set():
        return False
    with session_scope() as session:
        return transition(
            session,
            ctx.job_id,
            from_statuses=(names.RUNNING,),
            status=status,
            attempt=ctx.attempt,
            finished_at=utcnow(),
            **values,
        )


def job_task(
    name: str,
    handler: Callable[[JobContext], dict[str, Any]],
    *,
    soft_time_limit: float,
    time_limit: float,
) -> Any:
    """Register `handler` as the Celery task `name` that runs one job.

    Every job kind is safe to run again (a lease admits one delivery at a time, and
    handlers have no side effects outside SQL rows they own), hence `acks_late` and
    `reject_on_worker_lost`; results live in SQL, so Celery keeps none.
    """
    from workers.celery_app import celery_app

    @celery_app.task(
        name=name,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        soft_time_limit=soft_time_limit,
        time_limit=time_limit,
    )
    def task(job_id: str) -> None:
        run_job(job_id, handler)

    return task


def run_job(job_id: str, handler: Callable[[JobContext], dict[str, Any]]) -> None:
    """Run `handler` for the job if this delivery wins the lease; record how it ended."""
    client = get_redis()
    lease = _acquire_when_reachable(client, job_id)
    if lease is None:
        log.info("job %s: running elsewhere; duplicate delivery dropped", job_id)
        return
    # Kept alive from the moment it is held: a claim that waits on a busy database
    # longer than the lease's TTL must not come back to a lease that lapsed meanwhile.
    cancelled = threading.Event()
    lease.watch(cancelled)
    try:
        try:
            ctx = _claim(client, job_id, lease, cancelled)
        except Fenced:
            log.warning("job %s: lease lost while claiming; left to the reconciler", job_id)
            return
        # Its message is spent (claimed, or the job needs none): from here on, a marker
        # would be a later dispatch's, such as the one a hand-back below makes.
        with contextlib.suppress(redis.RedisError):
            client.delete(names.dispatch_marker_key(job_id))
        if ctx is None:
            return
        try:
            status, result = _run_claimed(ctx, handler)
        finally:
            ctx.close()
        _record_metrics(client, ctx, status, result)
        if status == LOST:
            _hand_back(client, ctx)
        else:
            _queue_webhook(client, job_id)
        for fn in ctx.deferred if status != LOST else ():
            try:
                fn()
            except Exception:
                log.exception("job %s: deferred work failed", job_id)
    finally:
        lease.release()


# How long a delivery waits for an unreachable Redis before it gives up on its message
# (a restart takes seconds). Giving up loses only the message: the reconciler sends a
# stalled job again.
ACQUIRE_PATIENCE_S = 20.0


def _acquire_when_reachable(client: redis.Redis, job_id: str) -> Lease | None:
    """The lease, once Redis answers: a message received as Redis went away is run
    when it is back, not dropped for a claim that could not be made."""
    ttl_s = get_settings().lease_ttl_s
    deadline = time.monotonic() + ACQUIRE_PATIENCE_S
    pause = 0.25
    while True:
        try:
            return Lease.acquire(client, job_id, ttl_s)
        except UNREACHABLE as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("job %s: Redis unreachable (%s); retrying in %.2g s", job_id, exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _record_metrics(
    client: redis.Redis, ctx: JobContext, status: str, result: dict[str, Any] | None
) -> None:
    """One pipeline per job, after its final state: never on the token path, never fatal."""
    if status == LOST:  # not an end: the job runs again elsewhere
        return
    figures = metrics.JobFigures(
        kind=ctx.kind, status=status, result=result, queued_at=ctx.queued_at,
        claimed_at=ctx.claimed_at, started=ctx.started, token_times=ctx.token_times,
    )  # fmt: skip
    try:
        metrics.record_job(client, figures)
    except (redis.RedisError, ValueError, TypeError) as exc:
        log.warning("job %s: metrics not recorded: %s", ctx.job_id, exc)


def _run_claimed(
    ctx: JobContext, handler: Callable[[JobContext], dict[str, Any]]
) -> tuple[str, dict[str, Any] | None]:
    """Run the handler and record how the job ended: (final status, result)."""
    try:
        result = handler(ctx)
        ctx.flush()  # every token is in Redis before the final state is
    except (JobFailed, SoftTimeLimitExceeded, Exception) as exc:
        # Fenced: the lease is someone else's. Unreachable (its events could not reach
        # Redis through the pump's retries: a partition, an outage): the lease cannot be
        # ours any more either. Neither is the job's failure: it runs again.
        if ctx.lost.is_set() or _caused_by(exc, (Fenced, *UNREACHABLE)):
            ctx.lost.set()
            log.warning("job %s: lease lost; the run stops and writes nothing", ctx.job_id)
            return LOST, None
        if isinstance(exc, JobFailed):
            error = {"type": exc.type, "message": exc.message}
        elif isinstance(exc, SoftTimeLimitExceeded):
            error = {"type": "time_limit", "message": "the job ran past its time limit"}
        else:
            log.exception("job %s failed", ctx.job_id)
            error = {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(EventPumpError):
            ctx.flush()  # the tokens before the failure still precede the error event
        if _finish(ctx, names.FAILED, error=error):
            ctx.events.unfenced().emit("error", error)
        return names.FAILED, None
    if ctx.lost.is_set():  # it stopped because its lease went: not a cancel, not a result
        return LOST, None
    # The final state is SQL's (fenced by attempt); its event follows whatever the lease does.
    if ctx.cancelled.is_set():
        if _finish(ctx, names.CANCELLED, result=result, progress_tokens=_tokens(result)):
            ctx.events.unfenced().emit(
                "status", {"status": names.CANCELLED, "attempt": ctx.attempt, "result": result}
            )
        return names.CANCELLED, result
    if _finish(ctx, names.SUCCEEDED, result=result, progress_tokens=_tokens(result)):
        ctx.events.unfenced().emit("done", result)
    return names.SUCCEEDED, result


LOST = "lost"  # how a run that lost its lease ended (for metrics; SQL is left alone)
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


def _hand_back(client: redis.Redis, ctx: JobContext) -> None:
    """A run that lost its lease re-sends its job at once (if nobody moved it already)
    instead of leaving it `running` until the reconciler's next pass."""
    from workers.celery_app import celery_app
    from workers.reconcile import requeue_lost_run

    try:
        with session_scope() as session:
            job = session.get(Job, ctx.job_id)
            if job is not None and job.status == names.RUNNING and job.attempts == ctx.attempt:
                requeue_lost_run(
                    session, client, celery_app, get_settings(), job, ctx.events.unfenced()
                )
    except Exception as exc:  # Redis or the broker still away: the reconciler will do it
        log.warning("job %s: not handed back (%s); left to the reconciler", ctx.job_id, exc)


def _queue_webhook(client: redis.Redis, job_id: str) -> None:
    """The job just became final: queue its webhook, if it has one (a no-op when this
    run's final write lost). Never fatal: the reconciler sweeps what this misses."""
    from workers.celery_app import celery_app

    try:
        with session_scope() as session:
            webhooks.after_final(session, celery_app, client, job_id)
    except SQLAlchemyError as exc:
        log.warning("job %s: webhook not queued (%s); left to the reconciler", job_id, exc)


def _caused_by(
    exc: BaseException | None, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _tokens(result: dict[str, Any]) -> int:
    usage = result.get("usage") or {}
    return int(usage.get("completion_tokens") or 0)
