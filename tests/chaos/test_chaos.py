"""Chaos: faults while jobs stream to several SSE clients each (issue 10's proof).

Every scenario runs a fresh stack (`harness.chaos_stack`: Redis with AOF, SQLite, an
API, a threads-pool generate worker of six task threads, or two of three where the
fault takes one away, a maintenance worker and beat), submits jobs, attaches three
followers per job (one stays, two hang up and come back with `Last-Event-ID`),
injects its fault while the jobs stream, and hands everything to the one checker
(`checker.verdict`): accepted = finished, no job left running, per client 0 events
lost, 0 duplicated, 0 out of order. Each prints its figures as one `chaos verdict
{...}` line.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.chaos.checker import verdict
from tests.chaos.harness import (
    LEASE_TTL_S,
    ChaosStack,
    Follower,
    Job,
    chaos_stack,
    follow,
    wait_done,
    wait_tokens,
)

pytestmark = pytest.mark.chaos


def attempts(stack: ChaosStack, jobs: list[Job]) -> dict[int, int]:
    rows = stack.rows(jobs)
    return {job.index: int(rows[job.id]["attempts"]) for job in jobs}


def test_a_generate_worker_sigkilled_mid_stream(tmp_path: Path) -> None:
    """Its jobs' leases lapse, the reconciler sends them again and the other worker
    runs them: clients see `retrying`, then the new attempt from its first token."""
    started = time.monotonic()
    with chaos_stack(tmp_path, jobs=6, generators=2) as stack:
        jobs = stack.submit(range(6))
        followers = follow(jobs, stack.urls)
        stack.wait_running(jobs)
        wait_tokens(followers, 12)
        pid, victims = max(stack.holders(jobs).items(), key=lambda item: len(item[1]))
        assert pid in {worker.proc.pid for worker in stack.generators}
        os.kill(pid, signal.SIGKILL)
        wait_done(followers)
        result = verdict("sigkill-generate-worker", stack, jobs, followers, started)
        runs = attempts(stack, jobs)
    result.assert_clean()
    assert {runs[job.index] for job in victims} == {2}
    assert {n for i, n in runs.items() if i not in {job.index for job in victims}} <= {1}


def test_redis_restarted_with_aof_mid_stream(tmp_path: Path) -> None:
    """Redis is killed and comes back from its AOF a second later: streams go on with
    their ids, runs keep their leases, and jobs accepted while it was away (SQL only)
    are sent by the reconciler once it is back."""
    started = time.monotonic()
    with chaos_stack(tmp_path, jobs=8, env={"CODELOOP_LEASE_TTL_S": "4"}) as stack:
        jobs = stack.submit(range(6))
        followers = follow(jobs, stack.urls)
        stack.wait_running(jobs)
        wait_tokens(followers, 12)
        stack.redis.stop()  # SIGKILL: what was acknowledged is in the AOF
        down = time.monotonic()
        late = stack.submit([6, 7])  # accepted while Redis is away
        time.sleep(max(0.0, 1.0 - (time.monotonic() - down)))
        stack.redis.start()
        followers += follow(late, stack.urls)
        wait_done(followers)
        result = verdict("redis-restart-aof", stack, jobs + late, followers, started)
        runs = attempts(stack, jobs + late)
    result.assert_clean()
    assert set(runs.values()) == {1}, runs


def test_redis_killed_twice_while_jobs_are_sent_and_taken(tmp_path: Path) -> None:
    """Redis is SIGKILLed twice while a burst of jobs is submitted and taken off the
    queue: sends fail or land just before the kill, workers lose the connection they
    took a message on. Every accepted job still runs and streams exactly once to each
    client: a send that failed left no dispatch marker, a message lost behind its
    marker is found stalled (`CODELOOP_REDISPATCH_AFTER_S`) and sent again, and the
    generate worker survives its broker connection's loss."""
    started = time.monotonic()
    env = {"CODELOOP_LEASE_TTL_S": "4", "CODELOOP_REDISPATCH_AFTER_S": "2"}
    with chaos_stack(tmp_path, jobs=18, tokens=30, env=env) as stack:
        jobs: list[Job] = []

        def burst() -> None:
            for i in range(18):
                jobs.extend(stack.submit([i]))
                time.sleep(0.08)

        sender = threading.Thread(target=burst)
        sender.start()
        for pause in (0.4, 0.8):
            time.sleep(pause)
            stack.redis.stop()  # SIGKILL, mid-send and mid-fetch
            time.sleep(0.5)
            stack.redis.start()
        sender.join()
        followers = follow(jobs, stack.urls)
        wait_done(followers)
        result = verdict("redis-killed-mid-dispatch", stack, jobs, followers, started)
        # The worker rode it out (Celery 5.7 used to exit: workers/broker_transport.py).
        survived = [worker.proc.poll() is None for worker in stack.generators]
    result.assert_clean()
    assert len(jobs) == 18
    assert all(survived), survived


def test_redis_flushed_mid_stream(tmp_path: Path) -> None:
    """Redis loses everything: leases, logs, queued messages. Running jobs run again
    (their runs notice the lost lease and hand them back), queued ones are sent again,
    and a client either goes on with correct ids or ends with SQL's final state, never
    silently missing an event: also one that comes back with a Last-Event-ID from
    before the loss, and one that arrives after it."""
    started = time.monotonic()
    with chaos_stack(tmp_path, jobs=8) as stack:
        jobs = stack.submit(range(8))  # six run, two wait in the queue
        rejoin = threading.Event()
        followers = follow(jobs, stack.urls, rejoin=rejoin)
        running = [job for job in jobs if job.id in _running_ids(stack, jobs)]
        away = [f for f in followers if f.rejoin is not None and f.job in running]
        _wait_dropped(away)
        stack.redis_client().flushall()
        time.sleep(1.0)
        rejoin.set()
        followers += [Follower(job, stack.urls) for job in jobs]
        wait_done(followers)
        result = verdict("redis-flushall", stack, jobs, followers, started)
    result.assert_clean(final_from_sql_allowed=True)


def test_an_api_process_killed_while_clients_stream(tmp_path: Path) -> None:
    """Clients of API A reconnect to API B with their Last-Event-ID and miss nothing."""
    started = time.monotonic()
    with chaos_stack(tmp_path, jobs=6, apis=2) as stack:
        first, second = stack.apis
        jobs = stack.submit(range(6), api=0)
        followers = follow(jobs, [first.url, second.url])
        wait_tokens(followers, 12)
        first.proc.kill()
        wait_done(followers)
        result = verdict("kill-api-process", stack, jobs, followers, started)
        runs = attempts(stack, jobs)
    result.assert_clean()
    assert all(f.connections >= 2 for f in followers)
    assert set(runs.values()) == {1}, runs


def test_a_worker_partitioned_from_redis_longer_than_its_lease(tmp_path: Path) -> None:
    """The partitioned worker's runs lose their leases: they stop and write nothing
    more (no stale token, no second final, no stale SQL write), and each job runs once
    more, elsewhere or on the same worker once it is back."""
    started = time.monotonic()
    with chaos_stack(tmp_path, jobs=6, tokens=200, generators=2, proxied=(0,)) as stack:
        jobs = stack.submit(range(6))
        followers = follow(jobs, stack.urls)
        stack.wait_running(jobs)
        wait_tokens(followers, 12)
        cut_off = stack.generators[0]
        victims = stack.holders(jobs).get(cut_off.proc.pid, [])
        assert victims, "the proxied worker runs none of the jobs"
        stack.proxies[0].partition()
        time.sleep(3 * LEASE_TTL_S)
        stack.proxies[0].heal()
        wait_done(followers)
        result = verdict("partition-worker", stack, jobs, followers, started)
        runs = attempts(stack, jobs)
        log = _wait_log(cut_off.log, [f"codeloop.generate[{job.id}] succeeded" for job in victims])
    result.assert_clean()
    assert {runs[job.index] for job in victims} == {2}, runs
    assert {n for i, n in runs.items() if i not in {job.index for job in victims}} <= {1}
    for job in victims:  # its runs knew they had lost the job, and ended
        assert f"job {job.id}: lease lost" in log


def _running_ids(stack: ChaosStack, jobs: list[Job]) -> set[str]:
    deadline = time.monotonic() + 30
    while True:
        rows = stack.rows(jobs)
        running = {job_id for job_id, row in rows.items() if row["status"] == "running"}
        if len(running) >= 6:
            return running
        assert time.monotonic() < deadline, {r["status"] for r in rows.values()}
        time.sleep(0.1)


def _wait_dropped(followers: list[Follower], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not all(f.dropped.is_set() for f in followers):
        assert time.monotonic() < deadline, [len(f.events) for f in followers]
        time.sleep(0.05)


def _wait_log(read: object, needles: list[str], timeout: float = 30) -> str:
    """The log once it holds every needle (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        text = read()  # type: ignore[operator]
        if all(needle in text for needle in needles) or time.monotonic() > deadline:
            return str(text)
        time.sleep(0.2)
