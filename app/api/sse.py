"""Relay one job's events to one SSE client, exactly once and in order (SPEC §7).

Order of operations is what makes it exact: subscribe live first (confirmed by Redis),
then replay the stream after the client's last id, then forward live events, dropping
any id already sent. A gap in live ids (a lost pub/sub message) or a `RESYNC` from the
hub sends us back to the stream. The stream closes after a terminal event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import redis.asyncio as aioredis
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api.event_hub import RESYNC, EventHub, encode_sse
from app.core.events import Event, read_events_after

# Returns the job's final event if the job is over but its stream has expired.
FinalEventLookup = Callable[[], Awaitable[tuple[str, dict[str, Any]] | None]]


async def relay_events(
    hub: EventHub,
    client: aioredis.Redis,
    job_id: str,
    last_event_id: int,
    final_event: FinalEventLookup,
    *,
    ping_s: float,
) -> AsyncIterator[bytes]:
    sent = last_event_id
    async with hub.subscribe(job_id) as sub:
        replayed, finished = await _replay(client, job_id, sent)
        if replayed:
            sent = replayed[-1].seq
            yield b"".join(encode_sse(e) for e in replayed)
        if finished:
            return
        if not replayed and sent == 0:
            final = await final_event()
            if final is not None:  # over, and its events have expired
                yield _encode_final(*final)
                return
        while True:
            try:
                item = await sub.get(timeout=ping_s)
            except TimeoutError:
                yield b": ping\n\n"
                continue
            # Send everything already waiting as one write: per-event overhead is what
            # limits a fast stream, not bytes.
            chunk: list[bytes] = []
            resync = finished = False
            while item is not None and not finished:
                if item is RESYNC:
                    resync = True
                    break
                event, encoded = item
                if event.seq == sent + 1:
                    sent = event.seq
                    chunk.append(encoded)
                    finished = event.is_terminal
                elif event.seq > sent + 1:  # a live message went missing: replay
                    resync = True
                    break
                item = None if finished else sub.get_nowait()
            if chunk:
                yield b"".join(chunk)
            if finished:
                return
            if resync:
                replayed, finished = await _replay(client, job_id, sent)
                if replayed:
                    sent = replayed[-1].seq
                    yield b"".join(encode_sse(e) for e in replayed)
                if finished:
                    return


async def _replay(client: aioredis.Redis, job_id: str, after: int) -> tuple[list[Event], bool]:
    events = await read_events_after(client, job_id, after)
    for i, event in enumerate(events):
        if event.is_terminal:
            return events[: i + 1], True
    return events, False


def _encode_final(type_: str, data: dict[str, Any]) -> bytes:
    return f"event: {type_}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventStreamResponse(Response):
    """An SSE response that writes each chunk straight to the server.

    The relay already yields wire-ready bytes and sends its own heartbeats, so none of
    sse-starlette's per-send machinery (a cancel scope and a lock per write) is needed;
    with hundreds of clients on one event, per-write cost is the fan-out's limit.
    """

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(headers=headers)
        # A stream has no length; Response would announce an empty body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.body_iterator = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

        async def stream(scope_: anyio.CancelScope) -> None:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            scope_.cancel()

        async def until_disconnect(scope_: anyio.CancelScope) -> None:
            message = await receive()
            while message["type"] != "http.disconnect":
                message = await receive()
            scope_.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(stream, group.cancel_scope)
                group.start_soon(until_disconnect, group.cancel_scope)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


def sse_response(
    body: AsyncIterator[bytes], *, headers: dict[str, str] | None = None
) -> EventStreamResponse:
    return EventStreamResponse(
        body,
        headers={
            "X-Accel-Buffering": "no",
            "Cache-Control": "no-store",
            "Connection": "keep-alive",
            **(headers or {}),
        },
    )


def parse_last_event_id(header: str | None, query: str | None) -> int:
    value = header if header not in (None, "") else query
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0
