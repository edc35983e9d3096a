"""API keys: created once, shown once, stored as SHA-256.

Keys carry 32 random bytes, so a fast hash is enough (no password stretching needed);
the visible `prefix` lets an operator tell keys apart without the secret.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.models import ApiKey, utcnow

KEY_PREFIX = "cl_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def env_key_owner(key: str) -> str:
    """Owner id of a key given in CODELOOP_API_KEYS (stable across restarts)."""
    return "env-" + hash_key(key)[:16]


def create_key(session: Session, name: str) -> tuple[ApiKey, str]:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=secret[:10], key_hash=hash_key(secret))
    session.add(row)
    session.flush()
    return row, secret


def owner_of_key(session: Session, key: str) -> str | None:
    row = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return row.id if row else None


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
