"""SPEC §6's transitions in one table, and every write of a run fenced by its attempt."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import sessionmaker

from app.core import db, jobs, lifecycle, names
from app.core.models import Job


@pytest.fixture
def sessions(any_db_url):
    engine = db.make_engine(any_db_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def test_a_status_change_outside_the_spec_table_is_refused(sessions):
    with sessions() as session:
        job, _ = jobs.create_job(session, kind="execute", owner="o", request={})
        for source, target in [
            (names.SUCCEEDED, names.RUNNING),
            (names.CANCELLED, names.QUEUED),
            (names.QUEUED, names.SUCCEEDED),
            (names.RETRYING, names.SUCCEEDED),
        ]:
            with pytest.raises(lifecycle.IllegalTransition):
                jobs.transition(session, job.id, from_statuses=(source,), status=target)
        assert session.get(Job, job.id).status == names.QUEUED
    # Every edge SPEC §6 draws is in it.
    for source, target in [
        (names.QUEUED, names.RUNNING), (names.RUNNING, names.SUCCEEDED),
        (names.RUNNING, names.FAILED), (names.RUNNING, names.CANCELLED),
        (names.RUNNING, names.RETRYING), (names.RETRYING, names.RUNNING),
        (names.QUEUED, names.CANCELLED), (names.RETRYING, names.CANCELLED),
    ]:  # fmt: skip
        lifecycle.check((source,), target)


def test_a_stale_runner_cannot_finish_or_fail_a_rerun(sessions):
    """The bug: `_finish` updated `WHERE status='running'` only, so a worker that lost its
    lease could finish into the row of the attempt the reconciler had re-sent."""
    with sessions() as session:
        job, _ = jobs.create_job(session, kind="execute", owner="o", request={})

        def move(source: str, target: str, attempt: int, **values) -> bool:
            return jobs.transition(
                session, job.id, from_statuses=(source,), status=target, attempt=attempt,
                **values,
            )  # fmt: skip

        assert move(names.QUEUED, names.RUNNING, 0, attempts=1)  # attempt 1 claims
        assert move(names.RUNNING, names.RETRYING, 1)  # the reconciler: its lease is gone
        assert move(names.RETRYING, names.RUNNING, 1, attempts=2)  # attempt 2 claims
        assert not move(names.RETRYING, names.RUNNING, 1, attempts=2)  # a second claim loses
        # Attempt 1 comes back: neither a stale failure nor a stale result lands.
        assert not move(names.RUNNING, names.FAILED, 1, error={"type": "stale"})
        assert not move(names.RUNNING, names.SUCCEEDED, 1, result={"text": "stale"})
        assert move(names.RUNNING, names.SUCCEEDED, 2, result={"text": "fresh"})
        row = session.get(Job, job.id)
        session.refresh(row)
        assert (row.status, row.attempts, row.result, row.error) == (
            names.SUCCEEDED, 2, {"text": "fresh"}, None,
        )  # fmt: skip
