"""The API's one pub/sub connection: it forgets what nobody follows and never goes deaf."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis

from app.api.event_hub import RESYNC, EventHub
from app.core.events import EventWriter
from tests.faults import RedisProcess


def test_the_hub_keeps_no_entry_for_a_channel_nobody_follows(redis_url):
    """The bug: `EventHub` kept counters for every channel it had ever followed."""

    async def run() -> tuple[int, int]:
        client = aioredis.Redis.from_url(redis_url)
        hub = EventHub(client)
        await hub.start()
        try:
            for i in range(30):
                async with hub.subscribe(f"leak-{i}") as sub:
                    assert sub is not None
            async with hub.subscribe("kept"):
                for _ in range(100):
                    if hub.channel_count == 1:
                        break
                    await asyncio.sleep(0.02)
                followed = hub.channel_count
            for _ in range(100):
                if hub.channel_count == 0:
                    break
                await asyncio.sleep(0.02)
            return followed, hub.channel_count
        finally:
            await hub.stop()
            await client.aclose()

    assert asyncio.run(run()) == (1, 0)


def test_the_hub_hears_again_after_redis_was_away_longer_than_a_resubscribe(tmp_path):
    """The bug: a resubscribe that failed (Redis still down) was logged and dropped, and
    the hub stayed deaf for good."""
    server = RedisProcess(tmp_path / "redis")

    async def run() -> list[object]:
        client = aioredis.Redis.from_url(server.url)
        hub = EventHub(client)
        await hub.start()
        got: list[object] = []
        try:
            async with hub.subscribe("deaf") as sub:
                server.stop()
                await asyncio.sleep(2.0)  # several reconnects fail meanwhile
                server.start()
                # Followers are told to replay once Redis confirms the resubscribe…
                while (item := await sub.get(timeout=15)) is RESYNC:
                    got.append(item)
                    if len(got) > 1:
                        break
                writer = EventWriter(redis.Redis.from_url(server.url), "deaf", maxlen=10, ttl_s=60)
                writer.emit("token", {"index": 0, "text": "x"})
                item = await sub.get(timeout=15)
                while item is RESYNC:  # the resubscribe's replay signal comes first
                    item = await sub.get(timeout=15)
                got.append(item)
        finally:
            await hub.stop()
            await client.aclose()
        return got

    try:
        got = asyncio.run(run())
    finally:
        server.stop()
    assert got[0] is RESYNC
    batch = got[-1]
    assert isinstance(batch, list) and [event.seq for event, _sse in batch] == [1]
