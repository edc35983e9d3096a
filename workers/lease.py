"""A job's lease: the right of one delivery to run it, kept alive while it runs.

The lease is a short-TTL Redis key holding its holder's token, refreshed by a watcher
thread. It disappears within `ttl_s` of its holder dying, and the reconciler then
re-sends the job. A holder on this host whose pid is gone is taken over at once (a
SIGKILLed pool process).

A refresh that finds the key gone or held by someone else means the run is no longer
ours (Redis lost its data, or we were partitioned away longer than the TTL and the job
was re-sent): the lease is then *lost* for good and never re-taken, the run stops, and
every write it would make is refused (SQL by attempt, events by the token; see
`jobs.transition` and `events.EventWriter`). The same thread listens for a cancel.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid

import redis

from app.core import names
from workers.runtime import worker_identity

log = logging.getLogger(__name__)

CANCEL_MESSAGE = b"cancel"

# 1: still ours (TTL renewed); 0: gone or someone else's.
_REFRESH_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_TAKEOVER_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1 or 0
end
return 0
"""


class Lease:
    """Held by the delivery running one job; `lost` is set once it is no longer held."""

    def __init__(self, client: redis.Redis, job_id: str, token: str, ttl_s: float) -> None:
        self.client = client
        self.job_id = job_id
        self.token = token
        self.key = names.lease_key(job_id)
        self.ttl_ms = int(ttl_s * 1000)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, client: redis.Redis, job_id: str, ttl_s: float) -> Lease | None:
        key = names.lease_key(job_id)
        token = f"{worker_identity()}:{uuid.uuid4().hex[:8]}"
        ttl_ms = int(ttl_s * 1000)
        if client.set(key, token, nx=True, px=ttl_ms):
            return cls(client, job_id, token, ttl_s)
        raw = client.get(key)
        holder = raw.decode() if isinstance(raw, bytes) else raw
        if (
            holder is not None
            and _holder_is_dead_here(holder)
            and client.eval(_TAKEOVER_LUA, 1, key, holder, token, ttl_ms)
        ):
            log.warning("job %s: took over the lease of dead %s", job_id, holder)
            return cls(client, job_id, token, ttl_s)
        return None

    def watch(self, cancelled: threading.Event) -> None:
        """Refresh in a thread; set `cancelled` on a cancel, and on a lost lease (so the
        handler stops within a token; the runner tells the two apart by `lost`)."""
        self._thread = threading.Thread(
            target=self._run, args=(cancelled,), name=f"lease-{self.job_id[:8]}", daemon=True
        )
        self._thread.start()

    def refresh(self) -> bool:
        """One refresh; False (and `lost` set) if the lease is not ours any more."""
        if self.lost.is_set():
            return False
        if self.client.eval(_REFRESH_LUA, 1, self.key, self.token, self.ttl_ms):
            return True
        self.lost.set()
        log.warning("job %s: lease lost; this run stops and writes nothing", self.job_id)
        return False

    def _run(self, cancelled: threading.Event) -> None:
        interval = self.ttl_ms / 3000
        confirmed = time.monotonic()  # the lease was ours (refreshed) at this time
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            listening = False
            next_refresh = time.monotonic()
            while not self._stop.is_set() and not self.lost.is_set():
                try:
                    if not listening:
                        pubsub.subscribe(names.cancel_channel(self.job_id))
                        listening = True
                        if self.client.exists(names.cancel_flag_key(self.job_id)):
                            cancelled.set()
                    message = pubsub.get_message(timeout=max(0.0, next_refresh - time.monotonic()))
                    if message is not None and message["data"] == CANCEL_MESSAGE:
                        cancelled.set()
                    if self._stop.is_set():
                        break
                    if time.monotonic() >= next_refresh:
                        if not self.refresh():
                            cancelled.set()
                            break
                        confirmed = time.monotonic()
                        next_refresh = confirmed + interval
                except redis.RedisError as exc:
                    # Unreachable past the TTL: whatever Redis holds now, it is not ours.
                    if time.monotonic() - confirmed > self.ttl_ms / 1000:
                        self.lost.set()
                        cancelled.set()
                        log.warning("job %s: lease lost (Redis unreachable: %s)", self.job_id, exc)
                        break
                    log.warning("job %s: lease refresh failed: %s", self.job_id, exc)
                    with contextlib.suppress(redis.RedisError):
                        pubsub.close()
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    listening = False
                    self._stop.wait(min(interval, 0.5))
        finally:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Wake the watcher out of its blocking read so the task returns at once.
            with contextlib.suppress(redis.RedisError):
                self.client.publish(names.cancel_channel(self.job_id), b"release")
            self._thread.join(timeout=5)
        try:
            self.client.eval(_RELEASE_LUA, 1, self.key, self.token)
        except redis.RedisError as exc:
            log.warning("job %s: lease release failed: %s", self.job_id, exc)


def _holder_is_dead_here(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != worker_identity().partition(":")[0] or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
