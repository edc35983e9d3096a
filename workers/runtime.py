"""Per-process clients of a worker (rebuilt after fork)."""

from __future__ import annotations

import os
import socket

import redis

from app.core.config import get_settings
from app.core.redis_clients import connect

_redis: redis.Redis | None = None


def get_redis() -> redis.Redis:
    """The process's client. Its commands time out rather than hang: that is how a run
    partitioned from Redis learns its lease is gone (workers/lease.py) and stops."""
    global _redis
    if _redis is None:
        _redis = connect(get_settings().redis_url, health_check_interval=30)
    return _redis


def reset_redis() -> None:
    global _redis
    _redis = None


def worker_identity() -> str:
    """`host:pid`, what a lease holder is known by."""
    return f"{socket.gethostname()}:{os.getpid()}"
