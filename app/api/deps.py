"""Request dependencies: a SQL session, the caller's identity, shared clients."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Annotated

import redis
import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from app.api.event_hub import EventHub
from app.api.quotas import Quotas
from app.core.auth import (
    ANONYMOUS_CALLER,
    Caller,
    active_key_count,
    caller_of_key,
    env_key_owner,
)
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.errors import Unauthorized
from app.core.events_token import MAX_TOKEN_CHARS, verify_events_token


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


# scope="function": the commit runs before the response is sent, so a commit that fails
# (the database went away) answers 503 instead of a 2xx for work that was not kept, or a
# response broken halfway.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


class AuthGate:
    """Decides whether keys are required and who a key stands for (its owner and workspace).

    `auth=auto` turns auth on when the API listens beyond loopback or any key exists;
    whether keys exist is re-read every few seconds, so `codeloop keys create` takes
    effect without a restart. Accepted keys are cached briefly to spare SQL. Keys from
    CODELOOP_API_KEYS and the anonymous caller belong to the `default` workspace.
    """

    _RECHECK_S = 5.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._env = {k: Caller(env_key_owner(k)) for k in settings.env_api_keys}
        self._enabled_at = 0.0
        self._enabled = settings.auth == "on"
        self._cache: dict[str, tuple[Caller, float]] = {}

    def enabled(self, session: Session) -> bool:
        mode = self.settings.auth
        if mode != "auto":
            return mode == "on"
        if not self.settings.api_is_loopback or self._env:
            return True
        now = time.monotonic()
        if now - self._enabled_at > self._RECHECK_S:
            self._enabled = active_key_count(session) > 0
            self._enabled_at = now
        return self._enabled

    def caller(self, session: Session, authorization: str | None) -> Caller:
        if not self.enabled(session):
            return ANONYMOUS_CALLER
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if key in self._env:
            return self._env[key]
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[1] < self._RECHECK_S:
            return cached[0]
        caller = caller_of_key(session, key)
        if caller is None:
            raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})
        self._cache[key] = (caller, time.monotonic())
        return caller


def get_caller(request: Request, session: SessionDep) -> Caller:
    gate: AuthGate = request.app.state.auth
    caller = gate.caller(session, request.headers.get("authorization"))
    check_request_rate(request, caller.owner)
    return caller


def check_request_rate(request: Request, owner: str) -> None:
    """Every authenticated request spends one of its key's requests per minute (429).
    An app built without quotas (a test's tiny app of a few routers) has no rate limit."""
    quotas: Quotas | None = getattr(request.app.state, "quotas", None)
    if quotas is not None:
        quotas.check_request_rate(owner)


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_owner(caller: CallerDep) -> str:
    """Just the key, for routes about jobs (which stay private to the key that made them)."""
    return caller.owner


OwnerDep = Annotated[str, Depends(get_owner)]


_secret_lock = threading.Lock()


def events_token_secret(request: Request) -> bytes:
    """CODELOOP_EVENTS_TOKEN_SECRET, or a random one for this process (one API replica)."""
    with _secret_lock:
        secret: bytes | None = getattr(request.app.state, "events_token_secret", None)
        if secret is None:
            configured = get_settings().events_token_secret
            secret = configured.encode() if configured else secrets.token_bytes(32)
            request.app.state.events_token_secret = secret
        return secret


def get_events_owner(
    request: Request,
    session: SessionDep,
    job_id: str,
    token: str | None = Query(
        default=None, max_length=MAX_TOKEN_CHARS, description="from POST /jobs/{id}/events-token"
    ),
) -> str:
    """The caller of a job's events route: a Bearer key, or an events token for this job."""
    if token is None:
        return get_caller(request, session).owner
    owner = verify_events_token(events_token_secret(request), job_id=job_id, token=token)
    if owner is None:
        raise Unauthorized("invalid or expired events token: ask POST /jobs/{id}/events-token")
    check_request_rate(request, owner)
    return owner


EventsOwnerDep = Annotated[str, Depends(get_events_owner)]


def get_redis_sync(request: Request) -> redis.Redis:
    return request.app.state.redis_sync


def get_redis_quick(request: Request) -> redis.Redis:
    return request.app.state.redis_quick


def get_redis_async(request: Request) -> aioredis.Redis:
    return request.app.state.redis


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def get_hub(request: Request) -> EventHub:
    return request.app.state.hub


RedisDep = Annotated[redis.Redis, Depends(get_redis_sync)]
# For reads SQL can answer instead: one short try (app/core/redis_clients.py).
QuickRedisDep = Annotated[redis.Redis, Depends(get_redis_quick)]
AsyncRedisDep = Annotated[aioredis.Redis, Depends(get_redis_async)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
HubDep = Annotated[EventHub, Depends(get_hub)]
