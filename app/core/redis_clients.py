"""Redis clients with explicit timeouts, for every process.

redis-py has none by default, so a Redis that takes commands and never answers (a
partition) hung whoever asked: an API request, a worker's lease refresh. A command
unanswered within its timeout fails instead (`redis.TimeoutError`), which callers
already treat as Redis being down: 503 from the API, a lost lease in a worker.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Longer than any blocking read we issue (XREAD BLOCK 500 ms in workers/agent, pub/sub
# polls of 1 s), far longer than any command should take.
COMMAND_TIMEOUT_S = 5.0
# For reads that SQL can answer instead (live progress) and checks that fail open (the
# rate limit): these must never make a request slow.
QUICK_TIMEOUT_S = 0.5


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client whose commands and connects give up after `COMMAND_TIMEOUT_S`."""
    return redis.Redis.from_url(
        url, socket_timeout=COMMAND_TIMEOUT_S, socket_connect_timeout=COMMAND_TIMEOUT_S, **kwargs
    )


def connect_quick(url: str) -> redis.Redis:
    """One try of `QUICK_TIMEOUT_S`, no retry: for what has a fallback."""
    return redis.Redis.from_url(
        url,
        socket_timeout=QUICK_TIMEOUT_S,
        socket_connect_timeout=QUICK_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


def connect_async(url: str, **kwargs: Any) -> aioredis.Redis:
    """The asyncio client (SSE relays, the event hub), with the same bound."""
    return aioredis.Redis.from_url(
        url, socket_timeout=COMMAND_TIMEOUT_S, socket_connect_timeout=COMMAND_TIMEOUT_S, **kwargs
    )
