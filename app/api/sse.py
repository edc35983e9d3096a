"""Relay one job's events to one SSE client, exactly once and in order (SPEC §7).

Order of operations is what makes it exact: subscribe live first (confirmed by Redis),
then replay the stream after the client's last id, then forward live events, dropping
any id already sent. A gap in live ids (a lost pub/sub message) or a `RESYNC` from the
hub sends us back to the stream. The stream closes after a terminal event. A log that
Redis lost (see `follow_batches`) ends with the job's final state from SQL; a Redis
outage longer than the relay rides out, or a database that fails or hangs when the
relay needs the job's state, ends with an `error` event of type `unavailable`.

`follow_batches` yields the events themselves (the OpenAI surface reshapes them);
`relay_events` yields their SSE bytes, several events per write: per-write overhead,
not bytes, is what limits a fast stream. Either goes out through sse-starlette's
`EventSourceResponse` (`sse_response`), which sends the heartbeats, applies the send
timeout and stops the body when the client disconnects.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Send

from app.api.event_hub import RESYNC, Batch, EventHub, Subscription, encode_final, encode_sse
from app.core import names
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.events import (
    EVENT_TYPES,
    WireEvent,
    encode_data,
    read_log_state,
    read_wire_events_after,
)
from app.core.models import Job

log = logging.getLogger(__name__)

# Returns the job's final event if the job is over but its stream has expired.
FinalEventLookup = Callable[[], Awaitable[tuple[str, dict[str, Any]] | None]]


def stored_final_event(job_id: str) -> FinalEventLookup:
    """The job's final event rebuilt from its SQL row (None while it is not over)."""

    def lookup() -> tuple[str, dict[str, Any]] | None:
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is None or job.status not in names.TERMINAL:
                return None
            if job.status == names.SUCCEEDED:
                return "done", job.result or {}
            if job.status == names.FAILED:
                return "error", job.error or {"type": "failed", "message": "job failed"}
            return "status", {"status": job.status, "attempt": job.attempts}

    async def final_event() -> tuple[str, dict[str, Any]] | None:
        # A database that hangs (a partition) must not hang the stream: past the bound
        # this raises TimeoutError, which ends it with an `error` event; the thread is
        # left to finish (or fail) on its own.
        with anyio.fail_after(SQL_WAIT_S):
            return await anyio.to_thread.run_sync(lookup, abandon_on_cancel=True)

    return final_event


@dataclass(frozen=True, slots=True)
class _Replay:
    batch: Batch
    finished: bool
    epoch: str | None  # the log's epoch (app/core/events.py), None if it has none
    # The log no longer holds what the client needs next: it ends before what the
    # client already saw, or it starts after it (Redis lost its head: a flush, the cap).
    lost: bool


async def follow_batches(
    hub: EventHub,
    client: aioredis.Redis,
    job_id: str,
    last_event_id: int,
    final_event: FinalEventLookup,
) -> AsyncIterator[Batch]:
    """Every event after `last_event_id` once, in order, in batches of what was waiting;
    ends after the terminal event.

    If Redis lost the job's log (a new epoch, a log that ends before the client's last
    id, or one that starts after it: a flush while a client was away), ids no longer
    mean what the client saw: the stream then ends with the job's final state read
    from SQL, once it has one. Raises RedisError / OSError /
    TimeoutError when Redis stays unreachable past `REPLAY_RETRY_S`."""
    sent = last_event_id
    async with hub.subscribe(job_id) as sub:
        replay = await _replay(client, job_id, sent)
        epoch = replay.epoch
        if replay.lost:
            yield await _final_from_sql(sub, final_event)
            return
        if replay.batch:
            sent = replay.batch[-1][0].seq
            yield replay.batch
        if replay.finished:
            return
        if not replay.batch:
            final = await final_event()
            if final is not None:  # over: its events expired, or the client saw them all
                yield _final_batch(final)
                return
        while True:
            item = await sub.get()
            # Take everything already waiting: one batch, one write.
            batch: Batch = []
            resync = reconnected = finished = False
            while item is not None and not finished:
                if item is RESYNC:
                    resync = reconnected = True
                    break
                for pair in item:
                    seq = pair[0].seq
                    if seq == sent + 1:
                        sent = seq
                        batch.append(pair)
                        if pair[0].is_terminal:
                            finished = True
                            break
                    elif seq > sent + 1:  # a live message went missing: replay
                        resync = True
                        break
                    else:  # a duplicate of the replay, or a log that started again
                        resync = True
                if resync:
                    break
                item = None if finished else sub.get_nowait()
            if batch:
                yield batch
            if finished:
                return
            if resync or epoch is None:  # (epoch None: learn it once the log exists)
                replay = await _replay(client, job_id, sent)
                if replay.lost or (epoch is not None and replay.epoch != epoch):
                    yield await _final_from_sql(sub, final_event)
                    return
                epoch = replay.epoch
                if replay.batch:
                    sent = replay.batch[-1][0].seq
                    yield replay.batch
                if replay.finished:
                    return
                if reconnected and (final := await final_event()) is not None:
                    # Over while the hub was away, its final event lost with Redis' data
                    # (a cancel during an outage, say): SQL has the last word.
                    yield _final_batch(final)
                    return


async def relay_events(
    hub: EventHub,
    client: aioredis.Redis,
    job_id: str,
    last_event_id: int,
    final_event: FinalEventLookup,
) -> AsyncIterator[bytes]:
    """The job's events as SSE bytes, one write per batch; a Redis outage that outlasts
    the relay's retries, or a database that fails or hangs when the relay needs the job's
    state, ends the stream with an `error` event (no id), never a hang."""
    try:
        async for batch in follow_batches(hub, client, job_id, last_event_id, final_event):
            yield b"".join(sse for _event, sse in batch)
    except (RedisError, OSError, TimeoutError, SQLAlchemyError) as exc:
        log.warning("job %s: events unavailable (%s); ending the stream", job_id, exc)
        yield encode_final("error", UNAVAILABLE)


UNAVAILABLE = {
    "type": "unavailable",
    "message": "the job's events are unavailable (Redis or the database unreachable); the "
    "job goes on: reconnect with Last-Event-ID or read GET /jobs/{id}",
}
REPLAY_RETRY_S = 10.0  # a relay rides out a Redis outage this long before it gives up
SQL_WAIT_S = 10.0  # and waits this long for one read of the job's state from SQL
SQL_RECHECK_S = 1.0  # waiting for SQL's final state: re-read this often (or on an event)


async def _replay(client: aioredis.Redis, job_id: str, after: int) -> _Replay:
    deadline = time.monotonic() + REPLAY_RETRY_S
    delay = 0.1
    while True:
        try:
            events = await read_wire_events_after(client, job_id, after)
            # Read after the events: a log restarted meanwhile shows as a new epoch.
            epoch, last = await read_log_state(client, job_id)
            break
        except (RedisError, OSError):
            if time.monotonic() + delay > deadline:
                raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
    batch: Batch = []
    finished = False
    for event in events:
        batch.append((event, encode_sse(event)))
        if event.is_terminal:
            finished = True
            break
    behind = after > 0 and (last is None or last < after)
    # Replaying past a hole would skip events silently: ids go up by one from 1.
    gap = bool(events) and events[0].seq != after + 1
    return _Replay(batch, finished, epoch, behind or gap)


def _final_batch(final: tuple[str, dict[str, Any]]) -> Batch:
    type_, data = final
    event = WireEvent(0, type_, encode_data(data).encode(), True)
    return [(event, encode_final(type_, data))]


async def _final_from_sql(sub: Subscription, final_event: FinalEventLookup) -> Batch:
    """The job's final state from SQL, once it has one (SQL outlives Redis' data)."""
    while True:
        final = await final_event()
        if final is not None:
            return _final_batch(final)
        with contextlib.suppress(TimeoutError):
            await sub.get(timeout=SQL_RECHECK_S)


class WatchedEventSourceResponse(EventSourceResponse):
    """sse-starlette's response with its send timeout kept by one watchdog per response.

    sse-starlette bounds every write with its own cancel scope (`move_on_after`), which
    costs ~13 us a write against ~2 us for the write itself: with hundreds of clients
    on a live job that is most of the fan-out's CPU. Here a write only notes when it
    started, and a watchdog (sse-starlette's `data_sender_callable` slot, run in the
    response's task group) raises `SendTimeoutError` when one has been stuck longer
    than `send_timeout`; that tears the response down as sse-starlette's own does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send_started: float | None = None
        if self.send_timeout is not None:
            self.data_sender_callable = self._watch_sends

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        self._send_started = time.monotonic()
        try:
            await send(message)
        finally:
            self._send_started = None

    async def _watch_sends(self) -> None:
        assert self.send_timeout is not None
        while True:
            await anyio.sleep(self.send_timeout / 4)
            started = self._send_started
            if started is not None and time.monotonic() - started > self.send_timeout:
                raise SendTimeoutError()


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", sep="\n")


# How /openapi.json declares a response that is a job's event stream (`content=` of a
# status): `itemSchema` describes one event, as FastAPI's own SSE routes do.
EVENT_STREAM_CONTENT: dict[str, Any] = {
    "text/event-stream": {
        "itemSchema": {
            "type": "object",
            "description": "one event (SPEC §7); comment heartbeats between events; the stream "
            "ends after the job's final event",
            "required": ["data", "event"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$", "description": "1, 2, 3 …"},
                "event": {"enum": list(EVENT_TYPES)},
                "data": {"type": "string", "contentMediaType": "application/json"},
            },
        }
    }
}


def sse_response(
    body: AsyncIterator[bytes], *, headers: dict[str, str] | None = None
) -> EventSourceResponse:
    """An SSE response for wire-ready bytes (sse-starlette passes bytes through as is)."""
    settings = get_settings()
    return WatchedEventSourceResponse(
        body,
        headers=headers,
        ping=settings.sse_ping_s,
        ping_message_factory=_ping,
        sep="\n",
        send_timeout=settings.sse_send_timeout_s,
    )


def parse_last_event_id(header: str | None, query: str | None) -> int:
    value = header if header not in (None, "") else query
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0
