"""A Redis lock that keeps two tuning runs of one kind from overlapping.

Two beats by mistake, a beat and a manual `POST /optimize/retriever`, two maintenance
workers: whoever sets the key first runs, the others are refused. The TTL is longer
than the task's hard time limit, so a run killed without releasing it (SIGKILL, a lost
machine) frees the lock by expiry, never while it could still be running. The value
names the holder (`job:<id>` or `beat:<task id>`) so the API's 409 can say who.
"""

from __future__ import annotations

import redis

from app.core.config import Settings

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lock_ttl_s(settings: Settings) -> int:
    return int(settings.tune_time_limit_s) + 300


class TuningLock:
    def __init__(self, client: redis.Redis, key: str, holder: str, ttl_s: int) -> None:
        self.client, self.key, self.holder, self.ttl_s = client, key, holder, ttl_s

    def acquire(self) -> bool:
        return bool(self.client.set(self.key, self.holder, nx=True, ex=self.ttl_s))

    def release(self) -> None:
        self.client.eval(_RELEASE_LUA, 1, self.key, self.holder)

    def holder_now(self) -> str | None:
        raw = self.client.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else raw
