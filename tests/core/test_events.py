"""The event contract: numbering, replay, live publish, capping and expiry."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from app.core import names
from app.core.events import (
    Event,
    EventWriter,
    WireEvent,
    read_events_after,
    read_events_after_sync,
    split_message,
)


def test_events_are_numbered_stored_and_published_together(redis_client):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(names.events_channel("j1"))
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    writer = EventWriter(redis_client, "j1", maxlen=1000, ttl_s=60)
    seqs = [writer.emit("token", {"index": i, "text": f"t{i}é"}) for i in range(5)]
    writer.emit("done", {"text": "x"}, progress_tokens=5)
    assert seqs == [1, 2, 3, 4, 5]
    stored = read_events_after_sync(redis_client, "j1", 0)
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5, 6]
    assert stored[0] == Event(1, "token", {"index": 0, "text": "t0é"})
    assert stored[-1].is_terminal and not stored[0].is_terminal
    live = [pubsub.get_message(timeout=1) for _ in range(6)]
    assert [Event.from_wire(m["data"]) for m in live] == stored
    assert [e.seq for e in read_events_after_sync(redis_client, "j1", 4)] == [5, 6]
    assert redis_client.get(names.progress_key("j1")) == b"5"
    assert 0 < redis_client.ttl(names.events_stream_key("j1")) <= 60
    pubsub.close()


def test_async_replay_matches(redis_url, redis_client):
    writer = EventWriter(redis_client, "j2", maxlen=1000, ttl_s=60)
    for i in range(3):
        writer.emit("token", {"index": i, "text": "a"})

    async def replay() -> list[Event]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await read_events_after(client, "j2", 1)
        finally:
            await client.aclose()

    assert [e.seq for e in asyncio.run(replay())] == [2, 3]


def test_stream_is_capped(redis_client):
    writer = EventWriter(redis_client, "j3", maxlen=100, ttl_s=60)
    for i in range(1000):
        writer.emit("token", {"index": i, "text": "a"})
    assert redis_client.xlen(names.events_stream_key("j3")) < 300
    assert writer.emit("done", {}) == 1001


def test_status_terminal_detection():
    assert Event(1, "status", {"status": "cancelled"}).is_terminal
    assert not Event(1, "status", {"status": "retrying"}).is_terminal
    assert Event(1, "error", {"type": "x", "message": "y"}).is_terminal


def test_one_write_is_one_message_whose_events_relay_without_reencoding(redis_client):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(names.events_channel("j4"))
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    writer = EventWriter(redis_client, "j4", maxlen=1000, ttl_s=60)
    batch = [("status", {"status": "running", "attempt": 1})]
    batch += [("token", {"index": i, "text": f'line {i}\n"é"'}) for i in range(3)]
    batch += [("done", {"text": "x"})]
    assert writer.emit_many(batch) == [1, 2, 3, 4, 5]
    message = pubsub.get_message(timeout=1)
    assert pubsub.get_message(timeout=0.2) is None, "one PUBLISH per write"
    live = split_message(message["data"])
    stored = read_events_after_sync(redis_client, "j4", 0)
    assert [(e.seq, e.type, e.data) for e in live] == [(e.seq, e.type, e.data) for e in stored]
    assert [e.is_terminal for e in live] == [False, False, False, False, True]
    # data stays the compact JSON the worker wrote: SSE passes it through as is
    assert live[1].data_json == b'{"index":0,"text":"line 0\\n\\"\\u00e9\\""}'
    assert WireEvent.parse(b'{"seq":7,"type":"status","data":{"status":"cancelled"}}').is_terminal
    pubsub.close()
