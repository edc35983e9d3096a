"""No accepted job is lost: a Redis that forgot its queue, a worker killed mid-generation."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from contextlib import ExitStack
from datetime import timedelta

import httpx
import pytest
import redis
from kombu.exceptions import OperationalError
from sqlalchemy import create_engine, text

from app.core import names
from app.core.db import session_scope
from app.core.jobs import create_job, dispatch, transition
from app.core.models import Job, utcnow
from tests.conftest import free_port, wait_until
from tests.faults import FlakyProxy
from tests.support import ApiServer, Beat, ServiceProcess, Worker, read_events


@pytest.fixture
def stack(service_env, tmp_path):
    """Start pieces on demand; everything started is stopped at the end."""
    with ExitStack() as stack:

        def start(kind: str, **kwargs):
            env = {**service_env, **kwargs.pop("env", {})}
            proc: ServiceProcess
            if kind == "api":
                proc = ApiServer(env, free_port(), tmp_path / "api.log").wait_ready()
            elif kind == "beat":
                proc = Beat(env, tmp_path)
            else:
                proc = Worker(env, log_path=tmp_path / f"{kind}.log", **kwargs).wait_ready()
            stack.callback(proc.stop)
            return proc

        yield start


def job_row(env, job_id: str) -> dict:
    engine = create_engine(env["CODELOOP_DATABASE_URL"])
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).mappings()
        result = dict(row.one())
    engine.dispose()
    return result


def test_job_survives_redis_losing_its_queue(stack, service_env, redis_client):
    api = stack("api")
    with httpx.Client(base_url=api.url, timeout=60) as http:
        job_id = http.post("/generate_code", json={"task": "x", "max_new_tokens": 8}).json()["id"]
        assert redis_client.llen("generate") == 1
        redis_client.flushdb()  # Redis restarted without persistence: the message is gone

        stack("worker", queues="generate,maintenance", name="rec@%h")
        time.sleep(1.0)
        assert http.get(f"/jobs/{job_id}").json()["status"] == "queued"

        stack("beat")  # the reconciler notices the missing message and sends it again
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert job_row(service_env, job_id)["dispatches"] == 2


def kill_running_worker(env, http, job_id: str) -> int:
    head = read_events(http, f"/jobs/{job_id}/events", stop_after=6)
    assert head[-1].event == "token"
    holder = job_row(env, job_id)["worker"]
    pid = int(holder.split(":")[1])
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    return pid


def test_worker_killed_mid_generation_is_retried(stack, service_env):
    api = stack("api")
    stack("worker", queues="generate", name="kill@%h")
    with httpx.Client(base_url=api.url, timeout=60) as http:
        job_id = http.post(
            "/generate_code", json={"task": "x", "max_new_tokens": 1200, "temperature": 0}
        ).json()["id"]
        started = time.monotonic()
        kill_running_worker(service_env, http, job_id)
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        events = read_events(http, f"/jobs/{job_id}/events")
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert time.monotonic() - started < 45
    kinds = [(e.event, e.data.get("status"), e.data.get("attempt")) for e in events
             if e.event == "status"]  # fmt: skip
    assert kinds == [("status", "running", 1), ("status", "retrying", 1), ("status", "running", 2)]
    retry_at = next(i for i, e in enumerate(events) if e.data.get("status") == "retrying")
    second = [e.data for e in events[retry_at:] if e.event == "token"]
    assert [t["index"] for t in second] == list(range(len(second)))
    assert "".join(t["text"] for t in second) == job["result"]["text"]
    assert [e.id for e in events] == list(range(1, len(events) + 1))


def test_worker_lost_too_often_fails_clearly(stack, service_env):
    api = stack("api")
    stack("worker", queues="generate", name="lost@%h", env={"CODELOOP_JOB_MAX_ATTEMPTS": "1"})
    with httpx.Client(base_url=api.url, timeout=60) as http:
        job_id = http.post(
            "/generate_code", json={"task": "x", "max_new_tokens": 1200, "temperature": 0}
        ).json()["id"]
        kill_running_worker(service_env, http, job_id)
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        events = read_events(http, f"/jobs/{job_id}/events")
    assert job["status"] == "failed"
    assert job["error"]["type"] == "worker_lost"
    assert events[-1].event == "error" and events[-1].data == job["error"]


def test_running_job_whose_whole_worker_vanished_is_resent_by_the_reconciler(
    stack, service_env, redis_client: redis.Redis
):
    """A machine that died takes its lease with it; the reconciler re-sends the job."""
    api = stack("api")
    with httpx.Client(base_url=api.url, timeout=60) as http:
        job_id = http.post("/generate_code", json={"task": "x", "max_new_tokens": 5}).json()["id"]
        # Play the part of a worker on another host that claimed the job, then vanished.
        engine = create_engine(service_env["CODELOOP_DATABASE_URL"])
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE jobs SET status='running', attempts=1, worker='gone:1' "
                     "WHERE id=:id"), {"id": job_id},
            )  # fmt: skip
        engine.dispose()
        redis_client.delete("generate")
        stack("worker", queues="generate,maintenance", name="rescue@%h")
        stack("beat")
        wait_until(lambda: job_row(service_env, job_id)["status"] != "running", 30,
                   what="reconciler")  # fmt: skip
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    assert job["status"] == "succeeded" and job["attempts"] == 2


def test_a_run_whose_lease_is_gone_stops_writes_nothing_and_runs_again(
    stack, service_env, redis_client: redis.Redis
):
    """The bug: the lease refresh's result was ignored (and a missing lease re-taken), so
    a run that had lost its job kept writing tokens and could finish into a rerun."""
    api = stack("api")
    stack("worker", queues="generate", name="fence@%h")
    with httpx.Client(base_url=api.url, timeout=60) as http:
        job_id = http.post(
            "/generate_code", json={"task": "x", "max_new_tokens": 2500, "temperature": 0}
        ).json()["id"]
        head = read_events(http, f"/jobs/{job_id}/events", stop_after=4)
        assert head[-1].event == "token"
        redis_client.delete(f"codeloop:job:{job_id}:lease")  # as if Redis had lost it
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        events = read_events(http, f"/jobs/{job_id}/events")
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    statuses = [(i, e.data["status"], e.data["attempt"]) for i, e in enumerate(events)
                if e.event == "status"]  # fmt: skip
    assert [s[1:] for s in statuses] == [("running", 1), ("retrying", 1), ("running", 2)]
    # Between the hand-back and the rerun, the lost run wrote nothing.
    assert all(e.event == "status" for e in events[statuses[1][0] : statuses[2][0] + 1])
    rerun = [e.data for e in events[statuses[2][0] :] if e.event == "token"]
    assert "".join(t["text"] for t in rerun) == job["result"]["text"]
    assert [e.id for e in events] == list(range(1, len(events) + 1))


def test_a_worker_partitioned_from_redis_loses_its_run_and_the_job_runs_again_not_fails(
    stack, service_env, redis_url
):
    """The bug: a partition (Redis commands hang, then time out) made the run's event
    pump give up with `redis.TimeoutError`, which the runner took for the job failing:
    it wrote `failed` into a job whose only fault was the network, before anyone could
    send it again, and its followers never got a final event (found by tests/chaos)."""
    proxy = FlakyProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    try:
        api = stack("api")
        stack("worker", queues="generate", name="cut@%h", env={"CODELOOP_REDIS_URL": proxy.url})
        with httpx.Client(base_url=api.url, timeout=60) as http:
            job_id = http.post(
                "/generate_code", json={"task": "x", "max_new_tokens": 2500, "temperature": 0}
            ).json()["id"]
            head = read_events(http, f"/jobs/{job_id}/events", stop_after=4)
            assert head[-1].event == "token"
            proxy.partition()  # no beat runs: nobody else can move the job meanwhile
            time.sleep(8)  # past its lease (3 s) and a command's timeout (5 s)
            assert job_row(service_env, job_id)["status"] == "running"
            proxy.heal()
            job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
            events = read_events(http, f"/jobs/{job_id}/events")
    finally:
        proxy.close()
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    statuses = [(e.data["status"], e.data["attempt"]) for e in events if e.event == "status"]
    assert statuses == [("running", 1), ("retrying", 1), ("running", 2)]
    assert [e.id for e in events] == list(range(1, len(events) + 1))


def test_a_lost_run_handed_back_as_redis_fails_is_still_sent_again(
    service_env, redis_url, redis_client
):
    """The bug: the hand-back moved the job to `retrying`, then Redis failed before the
    job was sent again; the marker of the message it had run from made it look sent,
    so the reconciler never sent it again and it waited forever."""
    from app.core.celery_config import make_producer
    from app.core.config import get_settings
    from workers.reconcile import reconcile_once, requeue_lost_run

    settings = get_settings()
    celery = make_producer(settings)
    with session_scope() as session:
        job, _ = create_job(session, kind="generate", owner="o", request={"task": "x"})
        dispatch(session, celery, redis_client, job, settings.result_ttl_s)
        assert transition(session, job.id, from_statuses=("queued",), status="running",
                          attempt=0, attempts=1)  # fmt: skip
    redis_client.delete("generate")  # a worker took the message, then lost its lease
    proxy = FlakyProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    flaky = redis.Redis.from_url(proxy.url)
    try:
        proxy.lose_reply_to(b"EVALSHA")  # announcing `retrying` fails: Redis went away
        with session_scope() as session, pytest.raises(redis.ConnectionError):
            row = session.get(Job, job.id)
            assert row is not None
            requeue_lost_run(session, flaky, celery, settings, row)
    finally:
        flaky.close()
        proxy.close()
    assert job_row(service_env, job.id)["status"] == "retrying"

    def resent() -> int:
        with session_scope() as session:
            return reconcile_once(session, redis_client, celery, settings)["resent"]

    wait_until(resent, 15, interval=0.5, what="the reconciler to send the job again")
    assert redis_client.llen("generate") == 1


def test_a_claim_that_waits_on_sql_longer_than_the_lease_keeps_its_lease(service_env):
    """The bug: the lease was refreshed only once the claim had committed, so a claim
    that waited on a busy database past the lease's TTL came back to a lapsed lease
    and its run was thrown away as lost (a false lease loss under load)."""
    from app.core.config import get_settings
    from workers import runtime
    from workers.jobrun import run_job

    runtime.reset_redis()
    with session_scope() as session:
        job, _ = create_job(session, kind="search", owner="o", request={"query": "x"})
    path = service_env["CODELOOP_DATABASE_URL"].removeprefix("sqlite:///")
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another writer holds the database
    runner = threading.Thread(target=run_job, args=(job.id, lambda ctx: {"items": []}))
    try:
        runner.start()
        time.sleep(get_settings().lease_ttl_s + 1.5)  # the claim's UPDATE waits all along
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    runner.join(30)
    row = job_row(service_env, job.id)
    assert (row["status"], row["attempts"]) == ("succeeded", 1), row


def test_a_message_lost_while_its_marker_survived_is_sent_again(stack, service_env, redis_client):
    """The bug: the reconciler trusted the dispatch marker alone, and a marker can outlive
    its message (a worker's connection dies with the message popped but not yet recorded
    as unacknowledged; Redis loses an AOF tail). The job waited a day for the marker to
    expire. Now a marked job that has waited `redispatch_after_s` on an empty queue is
    sent again."""
    api = stack("api")
    with httpx.Client(base_url=api.url, timeout=60) as http:
        job_id = http.post("/generate_code", json={"task": "x", "max_new_tokens": 8}).json()["id"]
        assert redis_client.exists(names.dispatch_marker_key(job_id))
        assert redis_client.delete("generate") == 1  # the message alone is gone
        # The maintenance queue's worker runs the reconciler that beat schedules.
        stack("worker", queues="generate,maintenance", name="stall@%h",
              env={"CODELOOP_REDISPATCH_AFTER_S": "1"})  # fmt: skip
        stack("beat")
        job = http.get(f"/jobs/{job_id}", params={"wait": 40}).json()
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert job_row(service_env, job_id)["dispatches"] == 2


def _shift_back(job_ids: list[str], seconds: float) -> None:
    """As if the jobs had been made and sent `seconds` earlier (their order kept)."""
    delta = timedelta(seconds=seconds)
    with session_scope() as session:
        for job_id in job_ids:
            row = session.get(Job, job_id)
            assert row is not None and row.dispatched_at is not None
            row.created_at -= delta
            row.dispatched_at -= delta


def test_a_stalled_message_is_sent_again_only_once_its_queue_moved_past_it(
    service_env, redis_client, monkeypatch
):
    """Three marked jobs on one queue; A's message is lost. While no worker takes
    anything, nothing is re-sent (a queue whose workers are down is not flooded with
    copies); once B, sent after A, starts, A is re-sent, once; once the broker's queue
    is empty, C (whose message went too) is re-sent."""
    from app.core.celery_config import make_producer
    from app.core.config import get_settings, reset_settings_cache
    from workers.reconcile import reconcile_once

    monkeypatch.setenv("CODELOOP_REDISPATCH_AFTER_S", "10")
    reset_settings_cache()
    settings = get_settings()
    celery = make_producer(settings)
    ids = []
    with session_scope() as session:
        for name in "ABC":
            job, _ = create_job(session, kind="search", owner="o", request={"query": name})
            dispatch(session, celery, redis_client, job, settings.result_ttl_s)
            ids.append(job.id)
            if name == "A":
                redis_client.delete("search")  # A's message is lost, its marker kept
            time.sleep(0.01)
    a, b, c = ids
    _shift_back(ids, 60)

    def resend() -> set[str]:
        before = {i: job_row(service_env, i)["dispatches"] for i in ids}
        with session_scope() as session:
            counts = reconcile_once(session, redis_client, celery, settings)
        again = {i for i in ids if job_row(service_env, i)["dispatches"] > before[i]}
        assert counts["resent"] == len(again)
        return again

    assert redis_client.llen("search") == 2
    assert resend() == set()  # nothing moves: B and C still wait in the broker
    with session_scope() as session:
        assert transition(session, b, from_statuses=("queued",), status="running",
                          attempt=0, attempts=1, started_at=utcnow())  # fmt: skip
    assert resend() == {a}  # B, sent after A, started: A's message is gone
    assert resend() == set()  # A was just sent: not again before `redispatch_after_s`
    redis_client.delete("search")  # C's message and A's new one go as well
    assert resend() == {c}  # nothing left in the broker, C still waits: lost


def test_a_send_that_fails_leaves_no_marker_and_the_job_is_sent_again(service_env, redis_client):
    """The bug: the marker was written before the message was sent, so a send that
    failed (Redis going away between the two) left a job marked as sent with no
    message. The send now comes first."""
    from app.core.celery_config import make_producer
    from app.core.config import get_settings
    from workers.reconcile import reconcile_once

    settings = get_settings()
    dead = make_producer(
        settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    )
    dead.conf.broker_connection_retry = False
    with session_scope() as session:
        job, _ = create_job(session, kind="search", owner="o", request={"query": "x"})
        # What the API's submit catches (the job stays accepted), not a 500.
        with pytest.raises(OperationalError, match=r"(?i)refused"):
            dispatch(session, dead, redis_client, job, settings.result_ttl_s)
    assert not redis_client.exists(names.dispatch_marker_key(job.id))
    assert redis_client.llen("search") == 0
    _shift_back([job.id], 60)
    with session_scope() as session:
        counts = reconcile_once(session, redis_client, make_producer(settings), settings)
    assert counts["resent"] == 1
    assert redis_client.llen("search") == 1
    assert redis_client.exists(names.dispatch_marker_key(job.id))


def test_a_delivery_received_as_redis_goes_away_runs_once_it_is_back(
    service_env, tmp_path, monkeypatch
):
    """The bug: a worker that got its message as Redis went away failed to take the
    lease and dropped the message; the job waited on a marker that said it was sent."""
    from app.core.config import reset_settings_cache
    from tests.faults import RedisProcess
    from workers import runtime
    from workers.jobrun import run_job

    private = RedisProcess(tmp_path / "redis", appendonly=True)
    monkeypatch.setenv("CODELOOP_REDIS_URL", private.url)
    reset_settings_cache()
    runtime.reset_redis()
    try:
        with session_scope() as session:
            job, _ = create_job(session, kind="search", owner="o", request={"query": "x"})
        private.stop()
        runner = threading.Thread(target=run_job, args=(job.id, lambda ctx: {"items": []}))
        runner.start()
        time.sleep(1.5)
        assert job_row(service_env, job.id)["status"] == "queued"
        private.start()
        runner.join(30)
        row = job_row(service_env, job.id)
        assert (row["status"], row["attempts"]) == ("succeeded", 1), row
    finally:
        runtime.reset_redis()
        private.stop()
