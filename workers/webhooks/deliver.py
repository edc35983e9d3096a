"""One delivery attempt of a final job's webhook, and what it leaves in SQL.

Claim the attempt (`webhooks.claim_attempt`), check the target (`guard`), POST the
job JSON signed (`client`), record the outcome fenced by the attempt. Retried with
exponential backoff on network errors, 5xx, 408 and 429 (Retry-After honoured up to
the backoff cap), at most `WEBHOOK_MAX_ATTEMPTS` attempts; a refused address, a
redirect, another 4xx or a missing secret fail it at once.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from typing import Any

from app.core import webhooks
from app.core.config import Settings
from app.core.db import session_scope
from app.core.jobs import job_to_json
from app.core.webhooks import Outcome
from workers.webhooks import client
from workers.webhooks.guard import AddressPolicy, RefusedTarget, Resolver, resolve_target

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429})
UNSIGNED = (
    "unsigned: CODELOOP_WEBHOOK_SECRET is not set where webhooks are delivered (the "
    "maintenance worker); refusing to send an unsigned webhook"
)


def hold_s(settings: Settings) -> float:
    """How long a claimed attempt may run before another delivery may take over."""
    return 60.0 + 4 * settings.webhook_timeout_s


def deliver_once(
    job_id: str, settings: Settings, *, resolver: Resolver | None = None
) -> tuple[int, Outcome] | None:
    """Make the job's next webhook attempt if one is due: (attempt, outcome) recorded,
    or None when there is nothing to do (not pending, not due, claimed elsewhere)."""
    with session_scope() as session:
        claim = webhooks.claim_attempt(session, job_id, hold_s=hold_s(settings))
        if claim is None:
            return None
        url = claim.job.callback_url or ""
        body = json.dumps(job_to_json(claim.job), separators=(",", ":")).encode()
    outcome = attempt(url, body, job_id, claim.attempt, settings, resolver=resolver)
    with session_scope() as session:
        if not webhooks.record_outcome(session, job_id, claim.attempt, outcome):
            log.warning("job %s: webhook attempt %d was taken over", job_id, claim.attempt)
            return None
    level = logging.INFO if outcome.delivered or outcome.retry_in else logging.WARNING
    log.log(level, "job %s: webhook attempt %d: %s", job_id, claim.attempt, _describe(outcome))
    return claim.attempt, outcome


def attempt(
    url: str,
    body: bytes,
    job_id: str,
    number: int,
    settings: Settings,
    *,
    resolver: Resolver | None = None,
) -> Outcome:
    """POST `body` to `url` once; how it went (with `retry_in` when worth another try)."""
    if not settings.webhook_secret:
        return Outcome(delivered=False, error=UNSIGNED)
    policy = AddressPolicy.from_settings(
        settings.webhook_allow_private, settings.webhook_allow_cidrs
    )
    try:
        target = resolve_target(url, policy, **({"resolver": resolver} if resolver else {}))
    except RefusedTarget as exc:
        return Outcome(delivered=False, error=f"refused: {exc.reason}")
    except OSError as exc:  # the name does not resolve (now)
        return _retry_or_fail(number, settings, error=f"dns: {exc}")
    timestamp = int(time.time())
    headers = {
        webhooks.SIGNATURE_HEADER: webhooks.sign(settings.webhook_secret, timestamp, body),
        "X-Codeloop-Job-Id": job_id,
        "X-Codeloop-Attempt": str(number),
    }
    try:
        answer = client.post(target, body, headers, timeout_s=settings.webhook_timeout_s)
    except (OSError, http.client.HTTPException) as exc:
        kind = "timeout" if isinstance(exc, socket.timeout | TimeoutError) else "network"
        return _retry_or_fail(number, settings, error=f"{kind}: {type(exc).__name__}: {exc}")
    code = answer.status
    if 200 <= code < 300:
        return Outcome(delivered=True, status_code=code)
    if 300 <= code < 400:
        error = f"HTTP {code}: redirects are not followed"
        return Outcome(delivered=False, status_code=code, error=error)
    if code >= 500 or code in RETRY_STATUSES:
        return _retry_or_fail(
            number, settings, status_code=code, error=f"HTTP {code}", at_least=answer.retry_after_s
        )
    return Outcome(delivered=False, status_code=code, error=f"HTTP {code}: refused by the receiver")


def _retry_or_fail(
    number: int,
    settings: Settings,
    *,
    error: str,
    status_code: int | None = None,
    at_least: float | None = None,
) -> Outcome:
    if number >= settings.webhook_max_attempts:
        return Outcome(
            delivered=False,
            status_code=status_code,
            error=f"{error} (gave up after {number} attempts)",
        )
    delay = webhooks.backoff_s(
        number, base_s=settings.webhook_backoff_s, max_s=settings.webhook_backoff_max_s
    )
    if at_least is not None:
        delay = min(max(delay, at_least), settings.webhook_backoff_max_s)
    return Outcome(delivered=False, status_code=status_code, error=error, retry_in=delay)


def _describe(outcome: Outcome) -> dict[str, Any]:
    return {k: v for k, v in vars(outcome).items() if v is not None}
