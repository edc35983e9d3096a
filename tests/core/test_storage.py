"""The job store on SQLite and PostgreSQL: migrations, idempotency, conditional transitions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import sessionmaker

from app.core import jobs, names
from app.core.db import make_engine, migrate
from app.core.errors import NotFound
from app.core.models import Job

SPEC_TABLES = {
    "jobs", "code_history", "knowledge_base", "project_context", "feedback_log",
    "function_calls", "api_keys", "embeddings", "retriever_configs",
}  # fmt: skip


@pytest.fixture
def sessions(any_db_url: str):
    engine = make_engine(any_db_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def test_migrations_create_every_table_and_are_idempotent(any_db_url: str):
    migrate(any_db_url)  # second run: nothing to do, no error
    engine = make_engine(any_db_url)
    assert set(inspect(engine).get_table_names()) >= SPEC_TABLES
    engine.dispose()


def test_sqlite_runs_in_wal_mode(sqlite_url: str):
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_idempotency_key_makes_one_job_even_under_races(sessions):
    def create(_: int) -> str:
        with sessions() as session:
            job, _created = jobs.create_job(
                session, kind="generate", owner="alice", request={"task": "x"},
                idempotency_key="same",
            )  # fmt: skip
            return job.id

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(create, range(16)))
    assert len(ids) == 1
    with sessions() as session:
        other, created = jobs.create_job(
            session, kind="generate", owner="bob", request={}, idempotency_key="same"
        )
    assert created and other.id not in ids  # keys are per owner


def test_transitions_are_won_by_exactly_one_party(sessions):
    with sessions() as session:
        job, _ = jobs.create_job(session, kind="execute", owner="o", request={})

    def claim(_: int) -> bool:
        with sessions() as session:
            return jobs.transition(
                session, job.id, from_statuses=(names.QUEUED,), status=names.RUNNING
            )

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(claim, range(6)))
    assert results.count(True) == 1
    with sessions() as session:
        assert session.get(Job, job.id).status == names.RUNNING


def test_owner_scoping_and_keyset_pagination(sessions):
    with sessions() as session:
        made = [
            jobs.create_job(session, kind="lint", owner="alice", request={"i": i})[0].id
            for i in range(7)
        ]
        jobs.create_job(session, kind="lint", owner="bob", request={})
        with pytest.raises(NotFound):
            jobs.get_owned_job(session, made[0], "bob")
        seen: list[str] = []
        cursor = None
        while True:
            page, cursor = jobs.list_jobs(
                session, owner="alice", kind=None, status=None, limit=3, cursor=cursor
            )
            seen += [j.id for j in page]
            if cursor is None:
                break
    assert seen == list(reversed(made))


def test_queue_position_counts_earlier_queued_jobs(sessions):
    with sessions() as session:
        first = jobs.create_job(session, kind="generate", owner="o", request={})[0]
        second = jobs.create_job(session, kind="generate", owner="o", request={})[0]
        jobs.create_job(session, kind="execute", owner="o", request={})  # another queue
        assert jobs.queue_position(session, first) == 1
        assert jobs.queue_position(session, second) == 2
        jobs.transition(session, first.id, from_statuses=(names.QUEUED,), status=names.RUNNING)
        session.refresh(second)
        assert jobs.queue_position(session, second) == 1


def test_the_migrated_schema_is_the_models_schema(any_db_url: str):
    """What Alembic builds and what the models declare agree (columns, types, indexes),
    so a model change cannot ship without its migration."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.core.models import Base

    engine = make_engine(any_db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
