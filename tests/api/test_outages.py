"""A Redis outage answers 503 (never 500) and never leaves a client hanging.

Each test runs a real API process on its own redis-server, which the test stops and
starts again; SQL stays up throughout, as it is the source of truth (but for the last
test, where the database stops answering in the middle of a stream).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import redis
from sqlalchemy import create_engine, make_url, text

from app.core.events import EventWriter
from tests.conftest import free_port
from tests.faults import FlakyProxy, RedisProcess
from tests.support import ApiServer, SseEvent, parse_sse


@pytest.fixture
def own_redis(tmp_path):
    server = RedisProcess(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def api(own_redis, service_env, tmp_path):
    env = {**service_env, "CODELOOP_REDIS_URL": own_redis.url}
    server = ApiServer(env, free_port(), tmp_path / "api.log").wait_ready()
    yield server
    server.stop()


def submit(http: httpx.Client) -> str:
    response = http.post("/generate_code", json={"task": "x", "max_new_tokens": 8})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def mark_running(env: dict[str, str], job_id: str) -> None:
    """Play a worker that claimed the job (no worker runs in these tests)."""
    engine = create_engine(env["CODELOOP_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET status='running', attempts=1, progress_tokens=3, "
                 "worker='elsewhere:1' WHERE id=:id"), {"id": job_id},
        )  # fmt: skip
    engine.dispose()


class Follower(threading.Thread):
    """Follows a job's SSE stream in the background until the server ends it."""

    def __init__(self, url: str, job_id: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.job_id, self.headers = url, job_id, headers or {}
        self.events: list[SseEvent] = []
        self.ended = threading.Event()
        self.start()

    def run(self) -> None:
        with (
            httpx.Client(base_url=self.url, timeout=90) as http,
            http.stream("GET", f"/jobs/{self.job_id}/events", headers=self.headers) as response,
        ):
            for event in parse_sse(response.iter_lines()):
                self.events.append(event)
        self.ended.set()

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"only {self.events} arrived"
            time.sleep(0.05)


def test_cancelling_a_queued_job_while_the_broker_is_down_cancels_it_and_followers_end(
    api, own_redis, service_env
):
    """The bug: the cancel committed `cancelled`, then `revoke()` raised (500), and
    followers waited forever for the event that was never written."""
    with httpx.Client(base_url=api.url, timeout=60) as http:
        job_id = submit(http)
        follower = Follower(api.url, job_id)
        time.sleep(1.0)  # the follower is subscribed
        own_redis.stop()
        response = http.post(f"/jobs/{job_id}/cancel")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "cancelled"
        assert http.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
        own_redis.start()  # back, empty: the event is lost, SQL is not
        assert follower.ended.wait(30), follower.events
        late = Follower(api.url, job_id)
        assert late.ended.wait(30)
    for events in (follower.events, late.events):
        assert events[-1].event == "status" and events[-1].data["status"] == "cancelled", events


def test_cancelling_a_running_job_while_redis_is_down_answers_503(api, own_redis, service_env):
    with httpx.Client(base_url=api.url, timeout=60) as http:
        job_id = submit(http)
        mark_running(service_env, job_id)
        own_redis.stop()
        response = http.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "unavailable"
    assert response.headers["retry-after"] == "2"


def test_a_running_job_is_read_and_long_polled_from_sql_while_redis_is_down(
    api, own_redis, service_env
):
    """The bugs: GET /jobs/{id} of a running job read its progress from Redis (500 when
    down), and a long-poll whose subscription failed or timed out answered 500."""
    with httpx.Client(base_url=api.url, timeout=60) as http:
        job_id = submit(http)
        mark_running(service_env, job_id)
        own_redis.stop()
        body = http.get(f"/jobs/{job_id}")
        assert body.status_code == 200, body.text
        assert body.json()["status"] == "running"
        assert body.json()["progress"]["tokens"] == 3  # SQL's figure
        started = time.monotonic()
        polled = http.get(f"/jobs/{job_id}", params={"wait": 2})
        assert polled.status_code == 200, polled.text
        assert polled.json()["status"] == "running"
        assert time.monotonic() - started < 15


def test_an_sse_stream_whose_redis_stays_away_ends_with_an_error_event(api, own_redis, service_env):
    """The bug: a relay whose Redis broke ended the body with no `error` event (or
    waited forever on a hub that had gone deaf)."""
    with httpx.Client(base_url=api.url, timeout=60) as http:
        job_id = submit(http)
    mark_running(service_env, job_id)
    writer = EventWriter(redis.Redis.from_url(own_redis.url), job_id, maxlen=100, ttl_s=60)
    follower = Follower(api.url, job_id)
    time.sleep(1.0)
    writer.emit("status", {"status": "running", "attempt": 1})
    follower.wait_for(1)
    own_redis.stop()
    assert follower.ended.wait(30), follower.events
    last = follower.events[-1]
    assert last.event == "error" and last.id is None
    assert last.data["type"] == "unavailable"
    assert [e.id for e in follower.events[:-1]] == [1]


def test_an_sse_stream_whose_database_hangs_ends_with_an_error_event(
    own_redis, service_env, postgres_url, tmp_path
):
    """The bug: when the relay needed the job's state from SQL (here: Redis lost the
    job's log) and the database did not answer, the stream pinged forever; one that
    failed outright broke the body with no `error` event."""
    database = make_url(postgres_url)
    proxy = FlakyProxy(database.port or 5432)
    through_proxy = database.set(host="127.0.0.1", port=proxy.port)
    url = through_proxy.render_as_string(hide_password=False)
    env = {**service_env, "CODELOOP_REDIS_URL": own_redis.url, "CODELOOP_DATABASE_URL": url}
    server = ApiServer(env, free_port(), tmp_path / "api-pg.log").wait_ready()
    client = redis.Redis.from_url(own_redis.url)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            job_id = submit(http)
        mark_running({"CODELOOP_DATABASE_URL": postgres_url}, job_id)
        EventWriter(client, job_id, maxlen=100, ttl_s=60).emit(
            "status", {"status": "running", "attempt": 1}
        )
        follower = Follower(server.url, job_id)
        follower.wait_for(1)
        proxy.partition()  # the database stops answering
        client.flushdb()  # and Redis loses the log: only SQL can say how the job ends
        EventWriter(client, job_id, maxlen=100, ttl_s=60).emit(
            "status", {"status": "running", "attempt": 2}
        )
        assert follower.ended.wait(30), follower.events
    finally:
        proxy.heal()
        server.stop()
        proxy.close()
        client.close()
    last = follower.events[-1]
    assert last.event == "error" and last.id is None, follower.events
    assert last.data["type"] == "unavailable"


def test_requests_while_redis_is_partitioned_answer_within_their_bounds(
    own_redis, service_env, tmp_path
):
    """Redis takes commands and never answers (a partition). The bugs: a long-poll whose
    subscription timed out answered 500; the API's Redis clients had no timeouts, so a
    read of a running job hung, and a `wait=2` long-poll took 20 s."""
    proxy = FlakyProxy(own_redis.port)
    env = {**service_env, "CODELOOP_REDIS_URL": proxy.url}
    server = ApiServer(env, free_port(), tmp_path / "api-cut.log").wait_ready()
    took: dict[str, float] = {}

    def timed(name: str, call):
        started = time.monotonic()
        response = call()
        took[name] = time.monotonic() - started
        return response

    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            job_id = submit(http)
            mark_running(service_env, job_id)
            proxy.partition()
            read = timed("read", lambda: http.get(f"/jobs/{job_id}"))
            polled = timed("poll", lambda: http.get(f"/jobs/{job_id}", params={"wait": 2}))
            late = timed("submit", lambda: http.post("/generate_code", json={"task": "y"}))
    finally:
        proxy.heal()
        server.stop()
        proxy.close()
    assert read.status_code == 200 and read.json()["progress"]["tokens"] == 3, read.text
    assert polled.status_code == 200, polled.text
    assert polled.json()["status"] == "running"
    assert late.status_code == 202, late.text  # committed: the reconciler sends it
    print("partitioned:", {name: round(s, 1) for name, s in took.items()})
    assert took["read"] < 7 and took["poll"] < 2 + 7 and took["submit"] < 10, took


def test_requests_while_the_database_is_down_answer_503(
    own_redis, service_env, postgres_url, tmp_path
):
    """The bug: with SQL unreachable, `GET /jobs/{id}`, the job list and a submit answered
    500 (nothing mapped a lost database to 503); and they recover once it is back."""
    database = make_url(postgres_url)
    proxy = FlakyProxy(database.port or 5432)
    url = database.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = {**service_env, "CODELOOP_REDIS_URL": own_redis.url, "CODELOOP_DATABASE_URL": url}
    server = ApiServer(env, free_port(), tmp_path / "api-pg.log").wait_ready()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            job_id = submit(http)
            proxy.cut()  # the database is gone: live connections drop, new ones are refused
            answers = [
                http.get(f"/jobs/{job_id}"),
                http.get("/jobs"),
                http.post("/execute_code", json={"code": "print(1)", "language": "python"}),
            ]
            for response in answers:
                assert response.status_code == 503, (response.request.url, response.text)
                assert response.json()["error"]["type"] == "unavailable"
                assert response.headers["retry-after"].isdigit()
            proxy = FlakyProxy(database.port or 5432)  # back, behind a new port
    finally:
        server.stop()
        proxy.close()
    restored = {**env, "CODELOOP_DATABASE_URL": postgres_url}
    server = ApiServer(restored, free_port(), tmp_path / "api-back.log").wait_ready()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get(f"/jobs/{job_id}").status_code == 200  # nothing accepted was lost
    finally:
        server.stop()
