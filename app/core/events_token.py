"""Short-lived tokens that let a browser's `EventSource` follow one job's events.

`EventSource` cannot send an `Authorization` header, and the long-lived API key must
never travel in a URL (URLs land in access logs and browser history). Instead a caller
who holds the key asks for a token (`POST /jobs/{id}/events-token`) and passes it as
`?token=` to that job's events route, and only there: the job id is part of what is
signed, so a token for one job opens no other, and it expires after minutes.

Wire form: `<expires_unix>.<owner>.<hmac>`; the HMAC-SHA256 covers job id, owner and
expiry, keyed by `CODELOOP_EVENTS_TOKEN_SECRET`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

MAX_TOKEN_CHARS = 300


def _signature(secret: bytes, job_id: str, owner: str, expires: int) -> str:
    message = f"{job_id}\n{owner}\n{expires}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_events_token(
    secret: bytes, *, job_id: str, owner: str, ttl_s: int, now: float | None = None
) -> str:
    expires = int(now if now is not None else time.time()) + ttl_s
    return f"{expires}.{owner}.{_signature(secret, job_id, owner, expires)}"


def verify_events_token(
    secret: bytes, *, job_id: str, token: str, now: float | None = None
) -> str | None:
    """The owner the token was issued to, or None if it is forged, for another job or
    expired."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    expires_text, _, rest = token.partition(".")
    owner, _, signature = rest.rpartition(".")
    if not expires_text.isdigit() or not owner or not signature:
        return None
    expires = int(expires_text)
    expected = _signature(secret, job_id, owner, expires)
    if not hmac.compare_digest(expected, signature):
        return None
    if expires < (now if now is not None else time.time()):
        return None
    return owner
