"""No accepted job is lost: a Redis that forgot its queue, a worker killed mid-generation."""

from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from tests.conftest import free_port, wait_until
from tests.support import ApiServer, Beat, Worker, read_events


@pytest.fixture
def stack(service_env, tmp_path):
    """Start pieces on demand; everything started is stopped at the end."""
    with ExitStack() as stack:

        def start(kind: str, **kwargs):
            env = {**service_env, **kwargs.pop("env", {})}
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
