"""The webhook record on SQLite and PostgreSQL (app/core/webhooks.py, migration 0005):
an attempt is claimed by exactly one party, its outcome is fenced by its number, and the
sweep finds exactly the final, pending, due jobs with nothing queued."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from alembic import command
from sqlalchemy import inspect

from app.core import jobs, names, webhooks
from app.core.db import alembic_config, make_engine, migrate
from app.core.models import Job, utcnow
from app.core.webhooks import Outcome

WEBHOOK_COLUMNS = {
    "callback_url", "webhook_status", "webhook_attempts", "webhook_next_at",
    "webhook_last_status_code", "webhook_last_error", "webhook_delivered_at",
}  # fmt: skip


def _columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()


def test_migration_0005_downgrades_and_upgrades(any_db_url: str):
    assert _columns(any_db_url) >= WEBHOOK_COLUMNS
    command.downgrade(alembic_config(any_db_url), "0004")
    assert not _columns(any_db_url) & WEBHOOK_COLUMNS
    migrate(any_db_url)
    assert _columns(any_db_url) >= WEBHOOK_COLUMNS


def _final_job(sessions, **values) -> str:
    with sessions() as session:
        job, _ = jobs.create_job(
            session, kind="execute", owner="o", request={}, callback_url="https://hooks.example/x"
        )
        assert job.webhook_status == webhooks.PENDING
        old = utcnow() - timedelta(minutes=1)
        jobs.transition(session, job.id, from_statuses=(names.QUEUED,), status=names.CANCELLED,
                        finished_at=old)  # fmt: skip
        for key, value in values.items():
            setattr(job, key, value)
        session.commit()
        return job.id


def test_one_claim_wins_and_outcomes_are_fenced_by_the_attempt(sessions):
    with sessions() as session:
        queued, _ = jobs.create_job(
            session, kind="execute", owner="o", request={}, callback_url="https://h.example/"
        )
        assert webhooks.claim_attempt(session, queued.id, hold_s=60) is None  # not final yet
    job_id = _final_job(sessions)

    def claim(_: int) -> int | None:
        with sessions() as session:
            got = webhooks.claim_attempt(session, job_id, hold_s=60)
            return None if got is None else got.attempt

    with ThreadPoolExecutor(6) as pool:
        claims = [c for c in pool.map(claim, range(6)) if c is not None]
    assert claims == [1]
    with sessions() as session:
        assert webhooks.claim_attempt(session, job_id, hold_s=60) is None  # held for 60 s
        retry = Outcome(delivered=False, status_code=503, error="HTTP 503", retry_in=0)
        assert webhooks.record_outcome(session, job_id, 1, retry)
        second = webhooks.claim_attempt(session, job_id, hold_s=60)
        assert second is not None and second.attempt == 2
        # the first attempt's late writer finds its attempt gone
        assert not webhooks.record_outcome(session, job_id, 1, Outcome(delivered=True))
        assert webhooks.record_outcome(session, job_id, 2, Outcome(delivered=True, status_code=204))
        job = session.get(Job, job_id)
        session.refresh(job)
        shown = webhooks.webhook_json(job)
    assert shown is not None
    assert shown["status"] == "delivered" and shown["attempts"] == 2
    assert shown["last_status_code"] == 204 and shown["last_error"] is None
    assert shown["delivered_at"] is not None and shown["next_attempt_at"] is None


def test_a_final_failure_is_recorded_with_its_reason(sessions):
    job_id = _final_job(sessions)
    with sessions() as session:
        assert webhooks.claim_attempt(session, job_id, hold_s=60) is not None
        refused = Outcome(delivered=False, error="refused: " + "x" * 900)
        assert webhooks.record_outcome(session, job_id, 1, refused)
        job = session.get(Job, job_id)
        session.refresh(job)
        assert job.webhook_status == webhooks.FAILED and len(job.webhook_last_error) == 500
        assert webhooks.claim_attempt(session, job_id, hold_s=60) is None


def test_the_sweep_finds_final_pending_due_jobs_with_nothing_queued(sessions, redis_client):
    due = _final_job(sessions)
    queued_already = _final_job(sessions)
    later = _final_job(sessions, webhook_next_at=utcnow() + timedelta(minutes=5))
    delivered = _final_job(sessions, webhook_status=webhooks.DELIVERED)
    with sessions() as session:
        running, _ = jobs.create_job(
            session, kind="execute", owner="o", request={}, callback_url="https://h.example/"
        )
        plain, _ = jobs.create_job(session, kind="execute", owner="o", request={})
        assert plain.webhook_status is None and webhooks.webhook_json(plain) is None
        redis_client.set(names.webhook_queued_key(queued_already), "1")
        found = webhooks.due_deliveries(session, redis_client)
    assert due in found
    assert not {queued_already, later, delivered, running.id, plain.id} & set(found)


def test_backoff_doubles_up_to_the_cap():
    delays = [webhooks.backoff_s(n, base_s=2, max_s=20) for n in range(1, 6)]
    assert delays == [2, 4, 8, 16, 20]
