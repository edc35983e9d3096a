"""Where Optuna keeps its studies: never in the SQLite file the API uses.

Optuna's advice is not to run concurrent studies on SQLite, and its RDB storage would
take write locks on our database. So:
- PostgreSQL database → `RDBStorage` on the same server, in its own schema (`optuna`).
  The schema matters: Optuna stamps its own Alembic revision into an `alembic_version`
  table, which in our schema would collide with the application's migrations.
- anything else → a `JournalStorage`: an append-only file under the data dir (one
  machine, several processes; file locks) or, with `TUNE_JOURNAL=redis`, a Redis list
  (several machines).

`optuna-dashboard` reads the same storage (`codeloop dashboard`).
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any

from app.core.config import Settings

log = logging.getLogger(__name__)

SCHEMA = "optuna"
JOURNAL_FILE = "optuna-journal.log"
REDIS_PREFIX = "codeloop:optuna:"

_cache: dict[tuple[str, ...], Any] = {}
_cache_lock = threading.Lock()


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql", "postgres"))


def describe(settings: Settings) -> str:
    """Where the studies live, for logs and the dashboard command."""
    if is_postgres(settings.database_url):
        return f"PostgreSQL schema {SCHEMA!r} of the application database"
    if settings.tune_journal == "redis":
        return f"Redis journal (keys {REDIS_PREFIX}*) at {settings.redis_url}"
    return f"journal file {journal_path(settings)}"


def journal_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "optuna" / JOURNAL_FILE


def _key(settings: Settings) -> tuple[str, ...]:
    if is_postgres(settings.database_url):
        return ("rdb", settings.database_url)
    if settings.tune_journal == "redis":
        return ("redis", settings.redis_url)
    return ("file", str(journal_path(settings).resolve()))


def optuna_storage(settings: Settings) -> Any:
    """This process's Optuna storage for the settings (built once, then reused)."""
    key = _key(settings)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _build(key)
        return _cache[key]


def reset() -> None:
    """Forget cached storages (tests; after a fork)."""
    with _cache_lock:
        _cache.clear()


def _build(key: tuple[str, ...]) -> Any:
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    kind, target = key
    if kind == "rdb":
        _create_schema(target)
        return RDBStorage(
            target,
            engine_kwargs={
                "pool_pre_ping": True,
                "connect_args": {"options": f"-csearch_path={SCHEMA}"},
            },
        )
    if kind == "redis":
        with warnings.catch_warnings():  # experimental since 3.1, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return JournalStorage(JournalRedisBackend(target, prefix=REDIS_PREFIX))
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _create_schema(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    finally:
        engine.dispose()
