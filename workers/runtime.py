"""Per-process clients of a worker (rebuilt after fork)."""

from __future__ import annotations

import os
import socket

import redis

from app.core.config import get_settings

_redis: redis.Redis | None = None
# A command unanswered this long fails (TimeoutError) instead of hanging: that is how a
# run partitioned from Redis learns its lease is gone (workers/lease.py) and stops.
# Longer than any blocking read a worker issues (XREAD BLOCK 500 ms in workers/agent).
SOCKET_TIMEOUT_S = 5.0


def get_redis() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(
            get_settings().redis_url,
            health_check_interval=30,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
        )
    return _redis


def reset_redis() -> None:
    global _redis
    _redis = None


def worker_identity() -> str:
    """`host:pid`, what a lease holder is known by."""
    return f"{socket.gethostname()}:{os.getpid()}"
