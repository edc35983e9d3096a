"""Every admission limit in one place: per-key quotas and the queue-depth bound.

| limit | counted where | refused with |
|---|---|---|
| requests per minute, every authenticated request | Redis (GCRA, one Lua script) | `429` |
| concurrent jobs: the key's queued, retrying and running jobs | SQL | `429` |
| generated tokens per UTC day (generate jobs only) | SQL | `429` until midnight |
| waiting jobs on the job's queue, all keys together | SQL | `503` |

Each refusal is SPEC's error shape with `Retry-After` and a `detail` naming the limit
(`{"limit", "max", "used", "retry_after_s", …}`), and is counted in
`codeloop_quota_refusals_total{limit}`. A setting of 0 turns its limit off.

The request rate is a generic cell rate algorithm: a key may spend its whole minute in
a burst, then one request per `60/N` s comes back, so `Retry-After` is short and exact
and no window edge lets `2N` through. The state is one Redis key per API key (its
"theoretical arrival time", on Redis's clock, so every API replica shares it).

When Redis does not answer, the request rate **fails open** (logged, then not asked
again for a few seconds): SQL answers reads and accepts jobs through a Redis outage
(the reconciler sends them later), and a limiter that turned that into 503s would make
Redis a single point of failure for the whole API. The SQL limits (concurrent jobs,
tokens, queue depth) still hold, so an outage cannot be used to flood the workers.
The job counts are read then written, not locked: a key racing itself may pass a
limit by the number of submits it has in flight at that instant.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core import lifecycle, metrics, names
from app.core.config import Settings
from app.core.errors import ApiError, TooManyRequests, Unavailable
from app.core.models import Job
from app.core.redis_clients import connect_quick

log = logging.getLogger(__name__)

PERIOD_S = 60  # "per minute"
CONCURRENT_RETRY_S = 5  # a job of the key has to end first; a short, polite back-off
QUEUE_FULL_RETRY_S = 10  # no honest ETA without a drain rate; long enough to drain some
REDIS_RECHECK_S = 5.0  # after a failure, fail open this long before asking Redis again
OPEN = (*lifecycle.WAITING, names.RUNNING)

# GCRA: KEYS[1] holds the key's theoretical arrival time (µs on Redis's clock: exact in
# a Lua double). ARGV: emission interval µs, period µs. Returns {allowed 0|1, wait µs}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval - period
if now < allow_at then return {0, math.ceil(allow_at - now)} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0}
"""


@dataclass(frozen=True)
class Refusal:
    """A limit that said no and the figures behind it (a full queue is 503, the rest 429)."""

    limit: str
    max: int
    used: int
    retry_after_s: int
    message: str
    extra: dict[str, Any] | None = None

    def error(self) -> ApiError:
        detail = {
            "limit": self.limit,
            "max": self.max,
            "used": self.used,
            "retry_after_s": self.retry_after_s,
            **(self.extra or {}),
        }
        kind = Unavailable if self.limit == "queue_depth" else TooManyRequests
        return kind(self.message, detail=detail, headers={"Retry-After": str(self.retry_after_s)})


class Quotas:
    """The API process's quota checks (one per app, on `app.state.quotas`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Its own client: short timeouts and no retries, whatever the app's pool does.
        self.redis = connect_quick(settings.redis_url)  # never slow
        self._gcra = self.redis.register_script(_GCRA)
        self._redis_back_at = 0.0

    def close(self) -> None:
        self.redis.close()

    # --- requests per minute (Redis) ------------------------------------------------

    def check_request_rate(self, owner: str) -> None:
        """Spend one request of the key's minute, or raise 429 (fails open without Redis)."""
        limit = self.settings.quota_requests_per_minute
        if limit <= 0 or time.monotonic() < self._redis_back_at:
            return
        period_us = PERIOD_S * 1_000_000
        try:
            allowed, wait_us = self._gcra(
                keys=[names.request_rate_key(owner)], args=[period_us / limit, period_us]
            )
        except (RedisError, OSError) as exc:
            self._redis_back_at = time.monotonic() + REDIS_RECHECK_S
            log.warning("request rate not enforced for %.0fs: Redis: %s", REDIS_RECHECK_S, exc)
            return
        if not allowed:
            retry = max(1, math.ceil(int(wait_us) / 1_000_000))
            message = f"at most {limit} requests per minute per key"
            self._refuse(Refusal("requests_per_minute", limit, limit, retry, message))

    # --- admitting a new job (SQL) --------------------------------------------------

    def admit_job(self, session: Session, *, owner: str, kind: str) -> None:
        """Raise unless a new job of `kind` fits the key's quotas and its queue's bound."""
        for refusal in (
            self._concurrent_jobs(session, owner),
            self._tokens_per_day(session, owner) if kind == "generate" else None,
            self._queue_depth(session, names.JOB_ROUTES[kind][1]),
        ):
            if refusal is not None:
                self._refuse(refusal)

    def _concurrent_jobs(self, session: Session, owner: str) -> Refusal | None:
        limit = self.settings.quota_concurrent_jobs
        if limit <= 0:
            return None
        used = count_open_jobs(session, owner)
        if used < limit:
            return None
        message = f"at most {limit} jobs per key may be queued or running at once"
        return Refusal("concurrent_jobs", limit, used, CONCURRENT_RETRY_S, message)

    def _tokens_per_day(self, session: Session, owner: str) -> Refusal | None:
        limit = self.settings.quota_tokens_per_day
        if limit <= 0:
            return None
        now = datetime.now(UTC)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = tokens_generated_since(session, owner, day)
        if used < limit:
            return None
        midnight = day + timedelta(days=1)
        retry = max(1, math.ceil((midnight - now).total_seconds()))
        message = f"this key generated its {limit} tokens for today (UTC)"
        resets = {"resets_at": midnight.isoformat()}
        return Refusal("tokens_per_day", limit, used, retry, message, resets)

    def _queue_depth(self, session: Session, queue: str) -> Refusal | None:
        limit = self.settings.queue_max_depth
        if limit <= 0:
            return None
        depth = waiting_jobs(session, queue)
        if depth < limit:
            return None
        message = f"the {queue} queue is full ({depth} jobs waiting); try again later"
        return Refusal("queue_depth", limit, depth, QUEUE_FULL_RETRY_S, message, {"queue": queue})

    def _refuse(self, refusal: Refusal) -> None:
        batch = metrics.Batch()
        batch.inc(metrics.QUOTA_REFUSALS, limit=refusal.limit)
        try:
            batch.send(self.redis)
        except (RedisError, OSError) as exc:  # a figure lost, never the answer
            log.debug("quota refusal not counted: %s", exc)
        raise refusal.error()


def count_open_jobs(session: Session, owner: str) -> int:
    """The key's own jobs not finished yet (child jobs of its generations excluded)."""
    query = (
        select(func.count())
        .select_from(Job)
        .where(Job.owner == owner, Job.status.in_(OPEN), Job.parent_id.is_(None))
    )
    return int(session.scalar(query) or 0)


def tokens_generated_since(session: Session, owner: str, since: datetime) -> int:
    """Tokens of the key's generate jobs created since `since` (SQL: survives Redis loss)."""
    if session.get_bind().dialect.name == "sqlite":  # stored as naive UTC there
        since = since.astimezone(UTC).replace(tzinfo=None)
    query = select(func.coalesce(func.sum(Job.progress_tokens), 0)).where(
        Job.owner == owner, Job.created_at >= since, Job.kind == "generate"
    )
    return int(session.scalar(query) or 0)


def waiting_jobs(session: Session, queue: str) -> int:
    """Jobs accepted on `queue` that no worker has started (the bound caps this count)."""
    query = (
        select(func.count())
        .select_from(Job)
        .where(Job.queue == queue, Job.status.in_(lifecycle.WAITING))
    )
    return int(session.scalar(query) or 0)
