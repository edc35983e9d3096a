"""The job event contract (SPEC §7): one type, its wire form, its writer and its reader.

Every event gets a per-job sequence number `seq` (1, 2, 3 …) from Redis. The writer
appends the event to the job's Redis Stream under the explicit entry id `<seq>-0` and
publishes the same payload on the job's pub/sub channel, in one Lua call, so the
stream and the channel can never disagree on order or numbering. Readers replay the
stream after a `Last-Event-ID` and drop live duplicates by `seq`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from app.core import names

EVENT_TYPES = ("status", "token", "tool_call", "tool_result", "done", "error")


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    type: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        if self.type in ("done", "error"):
            return True
        return self.type == "status" and self.data.get("status") in names.TERMINAL

    @classmethod
    def from_wire(cls, raw: str | bytes) -> Event:
        obj = json.loads(raw)
        return cls(seq=int(obj["seq"]), type=obj["type"], data=obj["data"])

    def to_wire(self) -> str:
        return json.dumps({"seq": self.seq, "type": self.type, "data": self.data})


# KEYS: seq, stream, progress   ARGV: type, data-json, maxlen, ttl, channel, progress-or-""
_APPEND_LUA = """
local seq = redis.call('INCR', KEYS[1])
local payload = '{"seq":' .. seq .. ',"type":"' .. ARGV[1] .. '","data":' .. ARGV[2] .. '}'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'e', payload)
redis.call('PUBLISH', ARGV[5], payload)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[4])
end
return seq
"""


class EventWriter:
    """Appends a job's events (worker side, synchronous)."""

    def __init__(self, client: redis.Redis, job_id: str, *, maxlen: int, ttl_s: int) -> None:
        self._client = client
        self._job_id = job_id
        self._keys = [
            names.event_seq_key(job_id),
            names.events_stream_key(job_id),
            names.progress_key(job_id),
        ]
        self._channel = names.events_channel(job_id)
        self._maxlen = maxlen
        self._ttl = ttl_s
        self._script = client.register_script(_APPEND_LUA)

    def emit(self, type_: str, data: dict[str, Any], *, progress_tokens: int | None = None) -> int:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        progress = "" if progress_tokens is None else str(progress_tokens)
        seq = self._script(
            keys=self._keys,
            args=[type_, json.dumps(data), self._maxlen, self._ttl, self._channel, progress],
        )
        return int(seq)


async def read_events_after(client: aioredis.Redis, job_id: str, after_seq: int) -> list[Event]:
    """Every stored event with seq > after_seq, in order (replay)."""
    entries = await client.xrange(names.events_stream_key(job_id), min=f"({after_seq}-0")
    return [Event.from_wire(fields[b"e"]) for _id, fields in entries]


def read_events_after_sync(client: redis.Redis, job_id: str, after_seq: int) -> list[Event]:
    entries = client.xrange(names.events_stream_key(job_id), min=f"({after_seq}-0")
    return [Event.from_wire(fields[b"e"]) for _id, fields in entries]  # type: ignore[union-attr]
