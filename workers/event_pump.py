"""Sends a job's events from a background thread so generation never waits on Redis.

Whatever queued up while the previous batch was in flight goes out as the next batch,
in one round trip (`EventWriter.emit_many`). Order is kept (one FIFO, one sender).
A batch is retried after a connection error or a timeout (a partition: no reply, no
reset) under the id it first went with, so one whose first try ran but lost its reply
is not appended twice. A `Fenced` write (the run lost its lease) is never retried.
`flush` blocks until everything queued so far is in Redis; the job runner flushes
before it writes a final state to SQL, so `done` always comes after the last token.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from typing import Any

import redis

from app.core.events import EventWriter

log = logging.getLogger(__name__)
MAX_BATCH = 512
RETRY_FOR_S = 10.0
# After a send, let tokens gather this long before the next one (unless someone is
# flushing). A first token goes out at once; later ones at most this much later, in
# fewer, larger writes: per-call cost, not bytes, is what a fast model pays for.
LINGER_S = 0.010


class EventPumpError(RuntimeError):
    """Events could not be written to Redis (or not in time)."""


class EventPump:
    def __init__(self, writer: EventWriter, name: str = "event-pump") -> None:
        self._writer = writer
        self._queue: deque[tuple[str, dict[str, Any], int | None]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._urgent = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, type_: str, data: dict[str, Any], progress_tokens: int | None = None) -> None:
        if self._error is not None:
            raise EventPumpError("events could not be written to Redis") from self._error
        with self._cond:
            self._queue.append((type_, data, progress_tokens))
            self._cond.notify()

    def flush(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        self._urgent.set()
        with self._cond:
            while (self._queue or self._busy) and self._error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EventPumpError(f"events not flushed within {timeout}s")
                self._cond.wait(remaining)
        if self._error is not None:
            raise EventPumpError("events could not be written to Redis") from self._error

    def close(self) -> None:
        self._urgent.set()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                self._busy = True
            try:
                self._send(batch)
            except BaseException as exc:  # surfaced to the job via put/flush
                self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if self._error is not None:
                return
            self._urgent.wait(LINGER_S)

    def _send(self, batch: list[tuple[str, dict[str, Any], int | None]]) -> None:
        progress = next((p for _t, _d, p in reversed(batch) if p is not None), None)
        events = [(type_, data) for type_, data, _p in batch]
        deadline = time.monotonic() + RETRY_FOR_S
        batch_id = uuid.uuid4().hex  # the same id on every retry: appended once at most
        tries = 0
        while True:
            try:
                self._writer.emit_many(events, progress_tokens=progress, batch_id=batch_id)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:  # retry it, in order
                if time.monotonic() > deadline:
                    raise
                if tries == 0:  # once per batch, not every 0.2 s through an outage
                    log.warning("event write failed (%s); retrying for %.0f s", exc, RETRY_FOR_S)
                tries += 1
                time.sleep(0.2)
