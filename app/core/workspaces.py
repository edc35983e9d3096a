"""Workspaces: the unit that shares memory (history, search, knowledge, ratings, projects).

Every API key belongs to exactly one. `default` always exists (created by migration
0004, re-created on demand if a table was emptied) and holds the keys from
`CODELOOP_API_KEYS`, the anonymous caller when auth is off, and every key created
without `--workspace`. Other workspaces are made by an operator (`codeloop workspaces
create NAME`); `codeloop keys create --workspace NAME` refuses a name that does not
exist, so a typo cannot quietly give a key an empty memory of its own.

Jobs stay private to the key that made them; a workspace only widens what *memory*
a key sees. Ids are opaque; `default`'s id is its name, so code can name it without
a lookup.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.models import DEFAULT_WORKSPACE, ApiKey, Workspace, new_id
from app.core.upsert import insert_for

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_workspace_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            "a workspace name is 1 to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            detail={"field": "workspace"},
        )
    return name


def ensure_default(session: Session) -> Workspace:
    """The `default` workspace, inserted if missing (idempotent under races)."""
    session.execute(
        insert_for(session, Workspace)
        .values(id=DEFAULT_WORKSPACE, name=DEFAULT_WORKSPACE)
        .on_conflict_do_nothing()
    )
    row = session.get(Workspace, DEFAULT_WORKSPACE)
    assert row is not None
    return row


def create_workspace(session: Session, name: str) -> Workspace:
    """A new workspace; Conflict if the name is taken."""
    check_workspace_name(name)
    if name == DEFAULT_WORKSPACE:
        raise Conflict("the default workspace always exists", detail={"workspace": name})
    made = session.scalar(
        insert_for(session, Workspace)
        .values(id=new_id(), name=name)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(Workspace.id)
    )
    if made is None:
        raise Conflict(f"workspace {name!r} already exists", detail={"workspace": name})
    row = session.get(Workspace, made)
    assert row is not None
    return row


def workspace_named(session: Session, name: str) -> Workspace:
    """The workspace called `name` (`default` is made if missing); NotFound otherwise."""
    check_workspace_name(name)
    if name == DEFAULT_WORKSPACE:
        return ensure_default(session)
    row = session.scalar(select(Workspace).where(Workspace.name == name))
    if row is None:
        raise NotFound(f"no workspace {name!r}", detail={"workspace": name})
    return row


def list_workspaces(session: Session) -> list[tuple[Workspace, int]]:
    """Every workspace with its number of active keys, oldest first."""
    ensure_default(session)
    active = (
        select(ApiKey.workspace_id, func.count().label("keys"))
        .where(ApiKey.revoked_at.is_(None))
        .group_by(ApiKey.workspace_id)
        .subquery()
    )
    rows = session.execute(
        select(Workspace, func.coalesce(active.c["keys"], 0))
        .outerjoin(active, active.c.workspace_id == Workspace.id)
        .order_by(Workspace.created_at, Workspace.name)
    ).all()
    return [(workspace, int(keys)) for workspace, keys in rows]
