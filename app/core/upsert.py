"""`INSERT … ON CONFLICT` for both engines.

Used instead of try/except IntegrityError inside a SAVEPOINT: pysqlite's legacy
transaction handling makes a SAVEPOINT opened before any DML commit on release, so
savepoints are not safe on the default SQLite engine.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_for(session: Session, model: Any) -> Any:
    """An INSERT construct with `.on_conflict_do_nothing/…_do_update` for the session's DB."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise ValueError(f"no upsert for the {dialect} dialect (SQLite and PostgreSQL only)")
