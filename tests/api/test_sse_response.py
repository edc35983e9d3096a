"""The SSE response itself (sse-starlette underneath): bytes pass through untouched, one
write per chunk, heartbeats as `: ping` comments, a stuck client is dropped after the
send timeout, and the body's cleanup runs however the response ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message

from app.api.sse import WatchedEventSourceResponse

SCOPE = {"type": "http", "method": "GET"}


class Body:
    def __init__(self, chunks: list[bytes], then_wait: bool = False) -> None:
        self.chunks, self.then_wait, self.closed = chunks, then_wait, False

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            for chunk in self.chunks:
                yield chunk
            if self.then_wait:
                await asyncio.Event().wait()
        finally:
            self.closed = True


async def never_disconnects() -> Message:
    await asyncio.Event().wait()
    return {}


def test_chunks_go_out_as_written_one_send_each():
    body = Body([b"id: 1\nevent: token\ndata: {}\n\n" * 3, b"id: 4\nevent: done\ndata: {}\n\n"])
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    response = WatchedEventSourceResponse(body(), sep="\n", send_timeout=5)
    asyncio.run(response(SCOPE, never_disconnects, send))
    assert sent[0]["type"] == "http.response.start"
    assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert [m["body"] for m in sent[1:]] == [*body.chunks, b""]
    assert sent[-1]["more_body"] is False and body.closed


def test_pings_are_comments_between_chunks():
    from app.api.sse import _ping

    body = Body([b"id: 1\nevent: status\ndata: {}\n\n"], then_wait=True)
    sent: list[bytes] = []

    async def send(message: Message) -> None:
        sent.append(message.get("body", b""))

    async def disconnect_later() -> Message:
        await asyncio.sleep(0.35)
        return {"type": "http.disconnect"}

    response = WatchedEventSourceResponse(
        body(), sep="\n", ping=0.1, ping_message_factory=_ping, send_timeout=5
    )
    asyncio.run(response(SCOPE, disconnect_later, send))
    assert sent[1] == b"id: 1\nevent: status\ndata: {}\n\n"
    assert set(sent[2:]) == {b": ping\n\n"} and len(sent[2:]) >= 2
    assert body.closed, "a disconnect ends the body (its cleanup runs)"


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout():
    body = Body([b"data: 1\n\n", b"data: 2\n\n"], then_wait=True)

    async def send(message: Message) -> None:
        if message.get("body") == b"data: 2\n\n":
            await asyncio.Event().wait()  # the client's socket is full and stays full

    response = WatchedEventSourceResponse(body(), sep="\n", send_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(SendTimeoutError):
        asyncio.run(response(SCOPE, never_disconnects, send))
    assert 0.2 <= time.monotonic() - started < 1.0
    assert body.closed
