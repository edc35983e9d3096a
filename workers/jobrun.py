"""Running one job inside a worker: lease, claim, cancel watch, final state.

A job may be delivered more than once (a lost worker's message is re-queued, the
reconciler re-sends, the broker redelivers). Exactly one delivery runs it: the one that
holds the job's Redis *lease*. The lease is a short-TTL key refreshed by a watcher
thread, so it disappears within `lease_ttl_s` of its holder dying; a holder on this
host whose pid is gone is taken over at once (a SIGKILLed pool process).

Final states are written to SQL first, then announced as events, so a client that
sees `done` can always read the finished job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from app.core import metrics, names
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.events import EventWriter
from app.core.jobs import transition
from app.core.models import Job, utcnow
from workers.event_pump import EventPump, EventPumpError
from workers.runtime import get_redis, worker_identity

log = logging.getLogger(__name__)

# Refresh the lease only if we still hold it; re-take it if Redis lost it.
_REFRESH_LUA = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not v then return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 or 0 end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_TAKEOVER_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1 or 0
end
return 0
"""


CANCEL_MESSAGE = b"cancel"


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
    request: dict[str, Any]
    attempt: int
    queued_at: Any
    events: EventWriter
    cancelled: threading.Event = field(default_factory=threading.Event)
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


class Lease:
    """The right to run one job; its watcher thread also listens for cancellation."""

    def __init__(self, client: redis.Redis, job_id: str, value: str, ttl_s: float) -> None:
        self.client = client
        self.job_id = job_id
        self.value = value
        self.ttl_ms = int(ttl_s * 1000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, client: redis.Redis, job_id: str, ttl_s: float) -> Lease | None:
        key = names.lease_key(job_id)
        value = f"{worker_identity()}:{uuid.uuid4().hex[:8]}"
        ttl_ms = int(ttl_s * 1000)
        if client.set(key, value, nx=True, px=ttl_ms):
            return cls(client, job_id, value, ttl_s)
        raw = client.get(key)
        holder = raw.decode() if isinstance(raw, bytes) else raw
        if (
            holder is not None
            and _holder_is_dead_here(holder)
            and client.eval(_TAKEOVER_LUA, 1, key, holder, value, ttl_ms)
        ):
            log.warning("job %s: took over the lease of dead %s", job_id, holder)
            return cls(client, job_id, value, ttl_s)
        return None

    def watch(self, cancelled: threading.Event) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(cancelled,), name=f"lease-{self.job_id[:8]}", daemon=True
        )
        self._thread.start()

    def _run(self, cancelled: threading.Event) -> None:
        interval = self.ttl_ms / 3000
        key = names.lease_key(self.job_id)
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(names.cancel_channel(self.job_id))
            if self.client.exists(names.cancel_flag_key(self.job_id)):
                cancelled.set()
            next_refresh = time.monotonic() + interval
            while not self._stop.is_set():
                try:
                    message = pubsub.get_message(timeout=max(0.0, next_refresh - time.monotonic()))
                    if message is not None and message["data"] == CANCEL_MESSAGE:
                        cancelled.set()
                    if self._stop.is_set():
                        break
                    if time.monotonic() >= next_refresh:
                        self.client.eval(_REFRESH_LUA, 1, key, self.value, self.ttl_ms)
                        next_refresh = time.monotonic() + interval
                except redis.RedisError as exc:
                    log.warning("job %s: lease refresh failed: %s", self.job_id, exc)
                    self._stop.wait(interval)
        finally:
            pubsub.close()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Wake the watcher out of its blocking read so the task returns at once.
            with contextlib.suppress(redis.RedisError):
                self.client.publish(names.cancel_channel(self.job_id), b"release")
            self._thread.join(timeout=5)
        try:
            self.client.eval(_RELEASE_LUA, 1, names.lease_key(self.job_id), self.value)
        except redis.RedisError as exc:
            log.warning("job %s: lease release failed: %s", self.job_id, exc)


def _holder_is_dead_here(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != worker_identity().partition(":")[0] or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _writer(client: redis.Redis, job_id: str) -> EventWriter:
    settings = get_settings()
    return EventWriter(client, job_id, maxlen=settings.stream_maxlen, ttl_s=settings.stream_ttl_s)


def _claim(client: redis.Redis, job_id: str) -> JobContext | None:
    settings = get_settings()
    writer = _writer(client, job_id)
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
                error=error,
                finished_at=utcnow(),
            ):
                writer.emit("error", error)
            return None
        won = transition(
            session,
            job_id,
            from_statuses=(previous,),
            status=names.RUNNING,
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
            request=dict(job.request),
            attempt=attempt,
            queued_at=job.created_at,
            events=writer,
        )
    writer.emit("status", {"status": names.RUNNING, "attempt": attempt})
    return ctx


def _finish(ctx: JobContext, status: str, **values: Any) -> bool:
    with session_scope() as session:
        return transition(
            session,
            ctx.job_id,
            from_statuses=(names.RUNNING,),
            status=status,
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
    lease = Lease.acquire(client, job_id, get_settings().lease_ttl_s)
    if lease is None:
        log.info("job %s: running elsewhere; duplicate delivery dropped", job_id)
        return
    try:
        ctx = _claim(client, job_id)
        if ctx is None:
            return
        lease.watch(ctx.cancelled)
        try:
            status, result = _run_claimed(ctx, handler)
        finally:
            ctx.close()
        _record_metrics(client, ctx, status, result)
        for fn in ctx.deferred:
            try:
                fn()
            except Exception:
                log.exception("job %s: deferred work failed", job_id)
    finally:
        lease.release()
        client.delete(names.dispatch_marker_key(job_id))


def _record_metrics(
    client: redis.Redis, ctx: JobContext, status: str, result: dict[str, Any] | None
) -> None:
    """One pipeline per job, after its final state: never on the token path, never fatal."""
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
            ctx.events.emit("error", error)
        return names.FAILED, None
    if ctx.cancelled.is_set():
        if _finish(ctx, names.CANCELLED, result=result, progress_tokens=_tokens(result)):
            ctx.events.emit(
                "status", {"status": names.CANCELLED, "attempt": ctx.attempt, "result": result}
            )
        return names.CANCELLED, result
    if _finish(ctx, names.SUCCEEDED, result=result, progress_tokens=_tokens(result)):
        ctx.events.emit("done", result)
    return names.SUCCEEDED, result


def _tokens(result: dict[str, Any]) -> int:
    usage = result.get("usage") or {}
    return int(usage.get("completion_tokens") or 0)
