"""The event log under faults: fenced writes, idempotent batches, epochs, paged replay."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from app.core import names
from app.core.events import (
    EventWriter,
    Fenced,
    read_events_after,
    read_events_after_sync,
    read_log_state,
)


def test_events_of_a_run_that_lost_its_lease_are_refused(redis_client):
    """A run partitioned away past its lease must not write into the stream its rerun
    now writes (its tokens would interleave with the new attempt's)."""
    redis_client.set(names.lease_key("f1"), "run-1")
    writer = EventWriter(redis_client, "f1", maxlen=100, ttl_s=60, lease_token="run-1")
    assert writer.emit("token", {"index": 0, "text": "a"}) == 1
    redis_client.set(names.lease_key("f1"), "run-2")  # the job was re-sent and claimed
    with pytest.raises(Fenced):
        writer.emit("token", {"index": 1, "text": "b"})
    redis_client.delete(names.lease_key("f1"))  # or Redis lost the lease
    with pytest.raises(Fenced):
        writer.emit("token", {"index": 1, "text": "b"})
    assert [e.seq for e in read_events_after_sync(redis_client, "f1", 0)] == [1]
    # What SQL already decided is announced without the lease.
    assert writer.unfenced().emit("done", {"text": "a"}) == 2


def test_the_same_batch_id_appends_once_and_returns_the_first_seqs(redis_client):
    writer = EventWriter(redis_client, "b1", maxlen=100, ttl_s=60)
    writer.emit("status", {"status": "running", "attempt": 1})
    batch = [("token", {"index": i, "text": "x"}) for i in range(3)]
    first = writer.emit_many(batch, batch_id="batch-a")
    again = writer.emit_many(batch, batch_id="batch-a")
    assert first == again == [2, 3, 4]
    assert writer.emit_many(batch, batch_id="batch-b") == [5, 6, 7]
    assert len(read_events_after_sync(redis_client, "b1", 0)) == 7
    assert 0 < redis_client.ttl(names.event_batches_key("b1")) <= 60


def test_a_log_that_redis_lost_goes_on_from_a_writer_that_knew_it_or_starts_a_new_epoch(
    redis_url, redis_client
):
    """The bug: the per-job seq counter lived only in Redis and restarted at 1 after a
    flush, so relays dropped the rest of the job as duplicates."""

    async def state() -> tuple[str | None, int | None]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await read_log_state(client, "e1")
        finally:
            await client.aclose()

    assert asyncio.run(state()) == (None, None)
    EventWriter(redis_client, "e1", maxlen=100, ttl_s=60).emit("token", {"index": 0, "text": ""})
    writer = EventWriter(redis_client, "e1", maxlen=100, ttl_s=60)
    writer.emit("token", {"index": 1, "text": ""})
    epoch, last = asyncio.run(state())
    assert epoch is not None and last == 2  # a second writer keeps the log's epoch
    redis_client.flushdb()
    # A writer that knew the log carries on its numbering, under the same epoch.
    assert writer.unfenced().emit("token", {"index": 2, "text": ""}) == 3
    assert asyncio.run(state()) == (epoch, 3)
    redis_client.flushdb()
    # One that never wrote to it cannot know: a new epoch, from 1.
    EventWriter(redis_client, "e1", maxlen=100, ttl_s=60).emit("status", {"status": "x"})
    new_epoch, last = asyncio.run(state())
    assert last == 1 and new_epoch not in (None, epoch)


def test_replay_reads_a_long_log_in_pages_and_misses_nothing(redis_url, redis_client):
    """The bug: one XRANGE without COUNT returned a whole 20 000-event log in one reply."""
    writer = EventWriter(redis_client, "p1", maxlen=10_000, ttl_s=60)
    for start in range(0, 2500, 500):
        writer.emit_many([("token", {"index": i, "text": "t"}) for i in range(start, start + 500)])

    async def replay(after: int) -> list[int]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return [e.seq for e in await read_events_after(client, "p1", after)]
        finally:
            await client.aclose()

    assert asyncio.run(replay(0)) == list(range(1, 2501))
    assert asyncio.run(replay(999)) == list(range(1000, 2501))
    assert [e.seq for e in read_events_after_sync(redis_client, "p1", 1500)] == list(
        range(1501, 2501)
    )
