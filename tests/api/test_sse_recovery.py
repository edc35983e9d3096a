"""SSE after Redis lost data: a client never hangs and never silently misses an event;
the stream continues with correct ids or ends with the job's final state from SQL."""

from __future__ import annotations

import httpx
import pytest
import redis

from app.core import names
from tests.api.test_outages import Follower
from tests.conftest import Platform, free_port
from tests.faults import RedisProcess
from tests.support import ApiServer, Worker, read_events


def test_a_reconnect_with_last_event_id_to_a_finished_job_whose_stream_expired_ends(
    platform: Platform,
):
    """The bug: with `Last-Event-ID > 0` and the stream gone, the relay pinged forever."""
    with platform.client() as http:
        job_id = http.post("/generate_code", json={"task": "x", "max_new_tokens": 6}).json()["id"]
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        assert job["status"] == "succeeded"
        client = platform.redis()
        client.delete(names.events_stream_key(job_id), names.event_seq_key(job_id),
                      names.event_epoch_key(job_id))  # fmt: skip
        client.close()
        events = read_events(http, f"/jobs/{job_id}/events", headers={"Last-Event-ID": "4"},
                             timeout=20)  # fmt: skip
    assert [(e.id, e.event, e.data) for e in events] == [(None, "done", job["result"])]


def test_a_reconnect_from_before_the_log_lost_its_head_ends_with_sql_instead_of_a_hole(
    platform: Platform,
):
    """The bug: after a flush the log went on from the lost run's last seq, so a client
    back with an older Last-Event-ID (or a new one, from 0) was replayed the rest and
    silently skipped the events in between (found by tests/chaos, the flush scenario)."""
    with platform.client() as http:
        job_id = http.post("/generate_code", json={"task": "x", "max_new_tokens": 8}).json()["id"]
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        assert job["status"] == "succeeded"
        client = platform.redis()
        stream = names.events_stream_key(job_id)
        assert client.xlen(stream) >= 6
        client.xtrim(stream, minid="5-0", approximate=False)  # the log now starts at seq 5
        client.close()
        for last_event_id in ("2", "0"):
            events = read_events(http, f"/jobs/{job_id}/events", timeout=20,
                                 headers={"Last-Event-ID": last_event_id})  # fmt: skip
            assert [(e.id, e.event, e.data) for e in events] == [(None, "done", job["result"])]
        # From where the log still starts, the stream itself goes on.
        events = read_events(http, f"/jobs/{job_id}/events", headers={"Last-Event-ID": "4"})
    assert events[0].id == 5 and events[-1].event == "done" and events[-1].id is not None


@pytest.mark.slow
def test_a_stream_whose_redis_lost_the_log_mid_job_goes_on_with_correct_ids(service_env, tmp_path):
    """The bug: the per-job seq counter lived only in Redis; after a flush it restarted
    at 1, the relay dropped every `seq <= sent` as a duplicate and the client silently
    lost the rest of the job, `done` included, and hung."""
    server = RedisProcess(tmp_path / "redis")
    env = {**service_env, "CODELOOP_REDIS_URL": server.url}
    api = ApiServer(env, free_port(), tmp_path / "api.log").wait_ready()
    worker = Worker(env, queues="generate", log_path=tmp_path / "worker.log", name="flush@%h")
    try:
        worker.wait_ready()
        with httpx.Client(base_url=api.url, timeout=60) as http:
            job_id = http.post(
                "/generate_code", json={"task": "x", "max_new_tokens": 3000, "temperature": 0}
            ).json()["id"]
            follower = Follower(api.url, job_id)
            follower.wait_for(20, timeout=60)
            redis.Redis.from_url(server.url).flushall()  # Redis lost everything
            assert follower.ended.wait(90), follower.events[-3:]
            job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
            # A client that reconnects after the loss, from where it was, ends too.
            seen = max(e.id for e in follower.events if e.id is not None)
            late = Follower(api.url, job_id, headers={"Last-Event-ID": str(seen)})
            assert late.ended.wait(30)
    finally:
        worker.stop()
        api.stop()
        server.stop()
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    # The run that knew the log handed the job back under its numbering: the stream
    # goes on with correct ids (a relay that noticed the loss first would instead end
    # with SQL's final state; either way nothing is silently missed).
    events = follower.events
    statuses = [(e.data["status"], e.data["attempt"]) for e in events if e.event == "status"]
    assert statuses == [("running", 1), ("retrying", 1), ("running", 2)], statuses
    assert [e.id for e in events] == list(range(1, len(events) + 1)), "ids must go on"
    assert events[-1].event == "done" and events[-1].data == job["result"]
    assert late.events[-1].event == "done" and late.events[-1].data == job["result"]
    assert all(e.id is None or e.id > seen for e in late.events)
