"""The event pump's retries never append a batch twice."""

from __future__ import annotations

import time

import redis

from app.core.events import EventWriter, read_events_after_sync
from tests.faults import FlakyProxy


def test_a_batch_retried_after_its_reply_was_lost_is_appended_once(redis_url, redis_client):
    """The bug: `EventPump` retried a batch after a ConnectionError; if the script had run
    and only its reply was lost, the batch went in again under new ids."""
    from workers.event_pump import EventPump

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = FlakyProxy(port)
    client = redis.Redis.from_url(proxy.url)
    try:
        writer = EventWriter(client, "pump1", maxlen=1000, ttl_s=60)
        writer.emit("status", {"status": "running", "attempt": 1})  # the script is loaded
        pump = EventPump(writer)
        proxy.lose_reply_to(b"EVALSHA")
        for i in range(5):
            pump.put("token", {"index": i, "text": f"t{i}"})
        pump.flush(timeout=15)
        pump.close()
    finally:
        client.close()
        proxy.close()
    assert proxy.replies_lost == 1
    stored = read_events_after_sync(redis_client, "pump1", 0)
    assert [e.seq for e in stored] == list(range(1, 7))
    assert [e.data["index"] for e in stored[1:]] == [0, 1, 2, 3, 4]


def test_a_batch_whose_reply_never_came_is_retried_and_appended_once(redis_url, redis_client):
    """The bug: a partition (commands go unanswered; nothing is refused or reset) shows
    as `redis.TimeoutError`, which the pump did not retry: it gave up at once and the
    run failed, although its events would have gone through a moment later (found by
    tests/chaos, the partition scenario)."""
    from workers.event_pump import EventPump

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = FlakyProxy(port)
    client = redis.Redis.from_url(proxy.url, socket_timeout=0.5)
    try:
        writer = EventWriter(client, "pump2", maxlen=1000, ttl_s=60)
        writer.emit("status", {"status": "running", "attempt": 1})
        pump = EventPump(writer)
        proxy.partition()
        for i in range(3):
            pump.put("token", {"index": i, "text": f"t{i}"})
        time.sleep(1.5)  # the first try and a retry time out
        proxy.heal()  # the held tries arrive now, in any order, with the retries behind
        pump.flush(timeout=15)
        pump.close()
    finally:
        client.close()
        proxy.close()
    stored = read_events_after_sync(redis_client, "pump2", 0)
    assert [e.seq for e in stored] == [1, 2, 3, 4]
    assert [e.data["index"] for e in stored[1:]] == [0, 1, 2]
