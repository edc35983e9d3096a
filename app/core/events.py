"""The job event contract (SPEC §7): one type, its wire form, its writer and its reader.

Every event gets a per-job sequence number `seq` (1, 2, 3 …) from Redis. The writer
appends the event to the job's Redis Stream under the explicit entry id `<seq>-0` and
publishes the same payload on the job's pub/sub channel, in one Lua call, so the
stream and the channel can never disagree on order or numbering. Readers replay the
stream after a `Last-Event-ID` and drop live duplicates by `seq`.

Per-event cost is what limits a fast stream, so the wire form is built for relaying:
`data` is compact JSON written once by the worker and passed through to SSE as is
(`WireEvent` reads only the header), and one call's events go out as ONE pub/sub
message (payloads joined by newlines, which JSON text never contains).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from app.core import names

EVENT_TYPES = ("status", "token", "tool_call", "tool_result", "progress", "done", "error")


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


def encode_data(data: dict[str, Any]) -> str:
    """The one JSON encoding of event data: compact, as it goes out in SSE `data:` lines."""
    return json.dumps(data, separators=(",", ":"))


_TYPE_AT = b',"type":"'
_DATA_AT = b'","data":'


@dataclass(frozen=True, slots=True)
class WireEvent:
    """A stored event with its header read and `data` left as the JSON text it was
    written as: relaying a token never parses or re-encodes its data."""

    seq: int
    type: str
    data_json: bytes
    is_terminal: bool

    @classmethod
    def parse(cls, raw: bytes) -> WireEvent:
        """One payload as `_APPEND_LUA` builds it: `{"seq":N,"type":"T","data":D}`."""
        type_at = raw.index(_TYPE_AT, 7)
        data_at = raw.index(_DATA_AT, type_at)
        type_ = raw[type_at + 9 : data_at].decode()
        data_json = raw[data_at + 9 : -1]
        terminal = type_ in ("done", "error") or (
            type_ == "status" and json.loads(data_json).get("status") in names.TERMINAL
        )
        return cls(int(raw[7:type_at]), type_, data_json, terminal)

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.data_json)
        return data


def split_message(raw: bytes) -> list[WireEvent]:
    """The events of one pub/sub message (one `emit_many` call), in order."""
    return [WireEvent.parse(payload) for payload in raw.split(b"\n")]


# KEYS: seq, stream, progress, batches, lease, epoch
# ARGV: maxlen, ttl, channel, progress-or-"", batch-id-or-"", lease-token-or-"", epoch,
#       last seq this writer saw, then (type, data-json) pairs
# Returns {epoch, seq, seq, ...}.
# One INCRBY and one PUBLISH per call (live delivery pays per message, not per event),
# one XADD per event (replay is by id). A batch id already seen returns its first
# seqs again and writes nothing (a retry whose first try ran but lost its reply). A
# lease token that no longer holds the lease refuses the write (a run that lost its
# job). A missing counter is created from the writer's epoch and last seq: a writer
# that knew the log (Redis lost it under a live run) carries on its numbering, same
# epoch; a fresh one starts a new epoch at 1, the relay's sign the log was lost.
_APPEND_LUA = """
local n = (#ARGV - 8) / 2
if ARGV[5] ~= '' then
  local first = redis.call('HGET', KEYS[4], ARGV[5])
  if first then
    local again = {redis.call('GET', KEYS[6]) or ARGV[7]}
    for i = 0, n - 1 do again[#again + 1] = tonumber(first) + i end
    return again
  end
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[6] then
  return redis.error_reply('FENCED this run no longer holds the job lease')
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[6], ARGV[7], 'EX', ARGV[2])
  redis.call('SET', KEYS[1], ARGV[8], 'EX', ARGV[2])
end
local seqs = {redis.call('GET', KEYS[6]) or ARGV[7]}
local payloads = {}
local seq = redis.call('INCRBY', KEYS[1], n) - n
for i = 9, #ARGV, 2 do
  seq = seq + 1
  local payload = '{"seq":' .. seq .. ',"type":"' .. ARGV[i] .. '","data":' .. ARGV[i + 1] .. '}'
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-0', 'e', payload)
  payloads[#payloads + 1] = payload
  seqs[#seqs + 1] = seq
end
if #payloads > 0 then
  redis.call('PUBLISH', ARGV[3], table.concat(payloads, '\\n'))
end
if ARGV[5] ~= '' and n > 0 then
  redis.call('HSET', KEYS[4], ARGV[5], seqs[2])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[6], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[2])
end
return seqs
"""


class Fenced(RuntimeError):
    """The write was refused: the run that made it no longer holds the job's lease."""


class EventWriter:
    """Appends a job's events (worker side, synchronous). Several events may go in one
    call (`emit_many`): one round trip to Redis however many tokens are waiting.

    A runner's writer carries its lease token (`lease_token`): once the lease is lost,
    every append raises `Fenced` and writes nothing. Writers that act on SQL's word (a
    final state just won, the reconciler, a cancel) carry none."""

    def __init__(
        self,
        client: redis.Redis,
        job_id: str,
        *,
        maxlen: int,
        ttl_s: int,
        lease_token: str | None = None,
    ) -> None:
        self._client = client
        self._job_id = job_id
        self._keys = [
            names.event_seq_key(job_id),
            names.events_stream_key(job_id),
            names.progress_key(job_id),
            names.event_batches_key(job_id),
            names.lease_key(job_id),
            names.event_epoch_key(job_id),
        ]
        self._channel = names.events_channel(job_id)
        self._maxlen = maxlen
        self._ttl = ttl_s
        self._lease_token = lease_token
        # The log this writer knows: adopted from every reply, so that if Redis loses the
        # log its next append carries on from here (see _APPEND_LUA).
        self.epoch = uuid.uuid4().hex[:12]
        self.last_seq = 0
        self._script = client.register_script(_APPEND_LUA)

    def unfenced(self) -> EventWriter:
        """The same job's writer without the lease check (for what SQL already decided),
        knowing the log as this one does."""
        writer = EventWriter(self._client, self._job_id, maxlen=self._maxlen, ttl_s=self._ttl)
        writer.epoch, writer.last_seq = self.epoch, self.last_seq
        return writer

    def emit(self, type_: str, data: dict[str, Any], *, progress_tokens: int | None = None) -> int:
        return self.emit_many([(type_, data)], progress_tokens=progress_tokens)[0]

    def emit_many(
        self,
        events: list[tuple[str, dict[str, Any]]],
        *,
        progress_tokens: int | None = None,
        batch_id: str | None = None,
    ) -> list[int]:
        """Append in order; the same `batch_id` again appends nothing and returns the
        seqs it got the first time (so a retry after a lost reply is harmless)."""
        args: list[Any] = [
            self._maxlen, self._ttl, self._channel,
            "" if progress_tokens is None else str(progress_tokens),
            batch_id or "", self._lease_token or "", self.epoch, self.last_seq,
        ]  # fmt: skip
        for type_, data in events:
            if type_ not in EVENT_TYPES:
                raise ValueError(f"unknown event type {type_!r}")
            args += [type_, encode_data(data)]
        try:
            reply = self._script(keys=self._keys, args=args)
        except redis.ResponseError as exc:
            if str(exc).startswith("FENCED"):
                raise Fenced(str(exc)) from exc
            raise
        epoch, *seqs = reply
        self.epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        numbers = [int(seq) for seq in seqs]
        if numbers:
            self.last_seq = max(self.last_seq, numbers[-1])
        return numbers


# Replay reads the stream in pages: one XRANGE never returns an unbounded reply.
PAGE = 1000


async def _xrange_after(client: aioredis.Redis, job_id: str, after_seq: int) -> list[Any]:
    key = names.events_stream_key(job_id)
    entries: list[Any] = []
    while True:
        page: Any = await client.xrange(key, min=f"({after_seq}-0", count=PAGE)
        entries += page or ()
        if len(page or ()) < PAGE:
            return entries
        after_seq = int(page[-1][0].split(b"-")[0])


async def read_events_after(client: aioredis.Redis, job_id: str, after_seq: int) -> list[Event]:
    """Every stored event with seq > after_seq, in order (replay)."""
    return _parse_entries(await _xrange_after(client, job_id, after_seq))


async def read_wire_events_after(
    client: aioredis.Redis, job_id: str, after_seq: int
) -> list[WireEvent]:
    """`read_events_after` for relaying: data stays JSON text."""
    entries = await _xrange_after(client, job_id, after_seq)
    return [WireEvent.parse(fields[b"e"]) for _id, fields in entries]


async def read_log_state(client: aioredis.Redis, job_id: str) -> tuple[str | None, int | None]:
    """(epoch, last seq in the stream) of a job's event log; None where there is none."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(names.event_epoch_key(job_id))
        pipe.xrevrange(names.events_stream_key(job_id), count=1)
        epoch, tail = await pipe.execute()
    last = int(tail[0][0].split(b"-")[0]) if tail else None
    return (epoch.decode() if isinstance(epoch, bytes) else epoch), last


def read_events_after_sync(client: redis.Redis, job_id: str, after_seq: int) -> list[Event]:
    key = names.events_stream_key(job_id)
    entries: list[Any] = []
    while True:
        page: Any = client.xrange(key, min=f"({after_seq}-0", count=PAGE)
        entries += page or ()
        if len(page or ()) < PAGE:
            return _parse_entries(entries)
        after_seq = int(page[-1][0].split(b"-")[0])


def wait_for_events(
    client: redis.Redis, job_id: str, after_seq: int, *, block_ms: int, count: int = 500
) -> list[Event]:
    """Events with seq > after_seq, blocking up to `block_ms` for the first (XREAD)."""
    reply: Any = client.xread(
        {names.events_stream_key(job_id): f"{after_seq}-0"}, count=count, block=block_ms
    )
    return [event for _stream, entries in reply or () for event in _parse_entries(entries)]


def _parse_entries(entries: Any) -> list[Event]:
    return [Event.from_wire(fields[b"e"]) for _id, fields in entries or ()]
