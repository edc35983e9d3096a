"""Live job events for every SSE client of this API process, over ONE pub/sub connection.

A client `subscribe`s to a job and gets a queue. The hub subscribes the job's channel on
the first local client and unsubscribes after the last. `subscribe` returns only once
Redis has confirmed the subscription: from then on nothing published can be missed, so
the caller may replay the stream and then rely on the queue.

Each pub/sub message (one worker write: one or more events) is read once and its events
SSE-encoded once, however many clients get them; a client's queue gets the message's
events as one item (a `Batch`). If the pub/sub connection drops, or a slow client's
queue overflows, the client is sent `RESYNC` and re-reads the stream from its last id,
so it still gets every event exactly once. A lost connection is retried with backoff
until Redis answers again; the hub never stays deaf after a failed resubscribe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.core import names
from app.core.events import WireEvent, split_message

log = logging.getLogger(__name__)

RESYNC = object()  # queue item: "you may have missed events; replay from the stream"
QUEUE_LIMIT = 5_000
SUBSCRIBE_TIMEOUT_S = 10.0  # Redis confirms a SUBSCRIBE in ms; this long means it is away
# Queue item: consecutive events, each with its SSE wire form.
Batch = list[tuple[WireEvent, bytes]]


def encode_sse(event: WireEvent) -> bytes:
    """The SSE wire form of one event (`id`, `event`, `data`, blank line); `data` is the
    compact JSON the worker wrote, passed through."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), event.data_json)


def encode_final(type_: str, data: dict[str, Any]) -> bytes:
    """A job's final event rebuilt from SQL once its stream has expired (no id)."""
    return f"event: {type_}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(eq=False)
class Subscription:
    job_id: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    overflowed: bool = False

    def offer(self, item: Any) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.overflowed = True
            self._drain()
            self.queue.put_nowait(RESYNC)
            return
        self.queue.put_nowait(item)

    def _drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()

    def get_nowait(self) -> Any:
        """Next queued item, or None if nothing is waiting."""
        if self.queue.empty():
            return None
        item = self.queue.get_nowait()
        if item is RESYNC:
            self.overflowed = False
        return item

    async def get(self, timeout: float | None = None) -> Any:
        """Next `Batch` or `RESYNC`; raises TimeoutError after `timeout`."""
        # wait_for wraps the get in a task: skip it when there is no timeout.
        item = await (
            self.queue.get() if timeout is None else asyncio.wait_for(self.queue.get(), timeout)
        )
        if item is RESYNC:
            self.overflowed = False
        return item


class EventHub:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pubsub = client.pubsub()
        self._subs: dict[str, set[Subscription]] = {}
        # Per channel followed now (entries go when its unsubscribe is confirmed):
        self._sent: dict[str, int] = {}  # SUBSCRIBE commands sent
        self._confirmed: dict[str, int] = {}  # confirmations received
        self._resync_on_confirm: set[str] = set()  # resubscribed after a reconnect
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def client_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    @property
    def channel_count(self) -> int:
        """Channels the hub keeps any state for (followed, or an unsubscribe in flight)."""
        return len(self._subs.keys() | self._sent.keys() | self._confirmed.keys())

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="event-hub")

    async def stop(self) -> None:
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()

    @contextlib.asynccontextmanager
    async def subscribe(
        self, job_id: str, timeout: float = SUBSCRIBE_TIMEOUT_S
    ) -> AsyncIterator[Subscription]:
        """Follow a job; raises `RedisError`/`OSError`, or `TimeoutError` when Redis has
        not confirmed within `timeout` (the wait for the lock, the command and its
        confirmation all count: a partitioned Redis must not hold a caller longer)."""
        channel = names.events_channel(job_id)
        sub = Subscription(job_id)
        try:
            async with asyncio.timeout(timeout):
                async with self._lock:
                    members = self._subs.setdefault(channel, set())
                    members.add(sub)
                    if len(members) == 1:
                        target = self._sent.get(channel, 0) + 1
                        self._sent[channel] = target
                        try:
                            await self._pubsub.subscribe(channel)
                        except BaseException:
                            # Not sent, or sent on a connection that redis-py drops when
                            # cancelled mid-command: no confirmation is coming either way.
                            self._sent[channel] = target - 1
                            raise
                    else:
                        target = self._sent[channel]
                async with self._changed:
                    await self._changed.wait_for(lambda: self._confirmed.get(channel, 0) >= target)
            yield sub
        finally:
            # A disconnected client's response is being cancelled: finish the
            # unsubscribe regardless, or a half-sent command would break the connection.
            with anyio.CancelScope(shield=True):
                async with self._lock:
                    members = self._subs.get(channel, set())
                    members.discard(sub)
                    if not members:
                        self._subs.pop(channel, None)
                        if not self._sent.get(channel):  # no SUBSCRIBE went out
                            self._forget(channel)
                        else:
                            try:
                                await self._pubsub.unsubscribe(channel)
                            except (RedisError, OSError):
                                self._forget(channel)  # a reconnect starts anew

    async def _read_forever(self) -> None:
        backoff = 0.1
        broken = False
        while True:
            try:
                if broken:
                    await self._reconnect()
                    broken = False
                    backoff = 0.1
                await self._read()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if not broken:
                    log.warning("event hub lost its pub/sub connection (%s); reconnecting", exc)
                    self._offer_all(RESYNC)  # their replay meets the outage, or catches up
                broken = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _read(self) -> None:
        while True:
            if not self._pubsub.subscribed:
                await asyncio.sleep(0.02)
                continue
            message = await self._pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            channel = _text(message["channel"])
            if kind == "message":
                self._deliver(channel, message["data"])
            elif kind == "subscribe":
                async with self._changed:
                    self._confirmed[channel] = self._confirmed.get(channel, 0) + 1
                    self._changed.notify_all()
                if channel in self._resync_on_confirm:
                    self._resync_on_confirm.discard(channel)
                    for sub in self._subs.get(channel, ()):
                        sub.offer(RESYNC)
            elif (
                kind == "unsubscribe"
                and channel not in self._subs
                # Replies come in order: every SUBSCRIBE sent before this one is confirmed.
                and self._confirmed.get(channel, 0) >= self._sent.get(channel, 0)
            ):
                self._forget(channel)

    def _forget(self, channel: str) -> None:
        self._sent.pop(channel, None)
        self._confirmed.pop(channel, None)
        self._resync_on_confirm.discard(channel)

    def _deliver(self, channel: str, raw: bytes) -> None:
        members = self._subs.get(channel)
        if not members:
            return
        item: Batch = [(event, encode_sse(event)) for event in split_message(raw)]
        for sub in members:
            sub.offer(item)

    def _offer_all(self, item: Any) -> None:
        for members in self._subs.values():
            for sub in members:
                sub.offer(item)

    async def _reconnect(self) -> None:
        """A new pub/sub connection with every followed channel; raises if Redis is still
        away (the reader retries with backoff). Followers replay once Redis confirms."""
        async with self._lock:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = self._client.pubsub()
            channels = list(self._subs)
            async with self._changed:
                for channel in list(self._sent.keys() | self._confirmed.keys()):
                    if channel not in self._subs:
                        self._forget(channel)
                for channel in channels:
                    self._sent[channel] = self._confirmed.get(channel, 0) + 1
                self._resync_on_confirm = set(channels)
            if channels:
                await self._pubsub.subscribe(*channels)
            else:
                await self._client.ping()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
