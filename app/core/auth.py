"""API keys: created once, shown once, stored as SHA-256.

Keys carry 32 random bytes, so a fast hash is enough (no password stretching needed);
the visible `prefix` lets an operator tell keys apart without the secret.

A caller is a `Caller`: the key's id (`owner`, which owns jobs) and its workspace
(which owns memory, see app/core/workspaces.py).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.models import DEFAULT_WORKSPACE, ApiKey, utcnow
from app.core.workspaces import ensure_default

KEY_PREFIX = "cl_"
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    """Who is asking: `owner` (the key's id) owns jobs; `workspace` (an id) owns memory."""

    owner: str
    workspace: str = DEFAULT_WORKSPACE


ANONYMOUS_CALLER = Caller(ANONYMOUS, DEFAULT_WORKSPACE)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def env_key_owner(key: str) -> str:
    """Owner id of a key given in CODELOOP_API_KEYS (stable across restarts)."""
    return "env-" + hash_key(key)[:16]


def create_key(
    session: Session, name: str, *, workspace: str = DEFAULT_WORKSPACE
) -> tuple[ApiKey, str]:
    """A new key in `workspace` (an id; see `workspaces.workspace_named`) and its secret."""
    if workspace == DEFAULT_WORKSPACE:
        ensure_default(session)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=secret[:10], key_hash=hash_key(secret), workspace_id=workspace)
    session.add(row)
    session.flush()
    return row, secret


def caller_of_key(session: Session, key: str) -> Caller | None:
    """The caller an active key stands for, None for an unknown or revoked key."""
    row = session.execute(
        select(ApiKey.id, ApiKey.workspace_id).where(
            ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
        )
    ).first()
    return Caller(row.id, row.workspace_id) if row else None


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def active_key_count(session: Session) -> int:
    return int(
        session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None)))
        or 0
    )
