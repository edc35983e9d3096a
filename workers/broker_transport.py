"""The workers' broker transport: kombu's Redis transport, one failure made survivable.

Celery 5.7 handles a lost broker connection by collecting the connection, which
detaches it from its transport (`transport.client = None`), and then closing it. The
old channel is still used after that: its close restores its unacknowledged messages,
and a task that finishes afterwards acks through it. Both need a Redis connection
pool, and a pool is built from the channel's connection parameters, read from
`transport.client`: `AttributeError`, which Celery calls an unrecoverable error, and
the whole worker exits. For a generate worker that meant reloading its model and
losing every generation it was running, on a Redis restart (the chaos scenario
`test_redis_killed_twice_while_jobs_are_sent_and_taken` hit it every time).

Here a channel remembers the parameters it connected with and uses them once its
transport is detached, so its restores and acks reach Redis as they would have.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _last_connparams: dict[bool, dict[str, Any]]

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        known = self.__dict__.setdefault("_last_connparams", {})
        if self.connection.client is None and asynchronous in known:
            return dict(known[asynchronous])  # detached: the parameters it had
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        known[asynchronous] = dict(params)
        return params


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
