"""Alembic environment: runs against the URL set by `app.core.db.alembic_config`."""

from alembic import context
from sqlalchemy import pool

from app.core.db import make_engine
from app.core.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    engine = make_engine(url)
    if not url.startswith("sqlite"):
        engine = engine.execution_options(poolclass=pool.NullPool)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Serialise concurrent migrators (several API replicas starting at once).
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727171)")
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
