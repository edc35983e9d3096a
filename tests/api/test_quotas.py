"""Per-key quotas and the queue-depth bound (app/api/quotas.py), against a real API
process on real Redis and SQL.

Most tests run an API with small limits and no worker, so the jobs they submit stay
queued: open jobs and queue depth are then exactly what the test made. The token
quota needs real generations: it runs on the shared platform's generate worker.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from tests.conftest import free_port, wait_until
from tests.faults import RedisProcess
from tests.support import ApiServer

KEYS = {"alice": "cl_test_alice_" + uuid.uuid4().hex, "bob": "cl_test_bob_" + uuid.uuid4().hex}
EXECUTE = {"language": "python", "code": "print(1)"}
CHAT = {"model": "codeloop", "messages": [{"role": "user", "content": "hi"}]}
# Every job-creating POST, with a body it accepts.
JOB_POSTS = [
    ("/generate_code", {"task": "add two numbers", "max_new_tokens": 1}),
    ("/execute_code", EXECUTE),
    ("/lint_code", {"language": "python", "code": "x = 1\n"}),
    ("/search_code", {"query": "add two numbers"}),
    ("/optimize/retriever", {}),
    ("/v1/chat/completions", CHAT),
]


def client(url: str, who: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {KEYS[who]}"})


@contextlib.contextmanager
def quota_api(env: dict[str, str], log: Path, **limits: int) -> Iterator[ApiServer]:
    """An API process with auth on, the two test keys and these limits (others off)."""
    settings = {
        "quota_requests_per_minute": 0,
        "quota_concurrent_jobs": 0,
        "quota_tokens_per_day": 0,
        "queue_max_depth": 0,
        **limits,
    }
    env = {**env, "CODELOOP_AUTH": "on", "CODELOOP_API_KEYS": ",".join(KEYS.values())}
    env.update({f"CODELOOP_{name.upper()}": str(value) for name, value in settings.items()})
    api = ApiServer(env, free_port(), log).wait_ready()
    try:
        yield api
    finally:
        api.stop()


def refusal(response: httpx.Response, status: int, limit: str) -> dict[str, Any]:
    """Assert a quota refusal: status, integer Retry-After, SPEC's shape naming the limit."""
    assert response.status_code == status, response.text
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "detail"}
    assert body["error"]["type"] == ("too_many_requests" if status == 429 else "unavailable")
    detail = body["error"]["detail"]
    assert detail["limit"] == limit and detail["retry_after_s"] == retry_after
    return detail


def refusals_counted(url: str, limit: str) -> float:
    metrics = httpx.get(url + "/metrics", timeout=30).text
    prefix = f'codeloop_quota_refusals_total{{limit="{limit}"}} '
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def sql_count(env: dict[str, str], where: str = "1=1") -> int:
    engine = create_engine(env["CODELOOP_DATABASE_URL"])
    with engine.connect() as conn:
        count = conn.execute(text(f"SELECT count(*) FROM jobs WHERE {where}")).scalar_one()
    engine.dispose()
    return int(count)


def submit(http: httpx.Client, path: str = "/execute_code", body: Any = EXECUTE) -> str:
    response = http.post(path, json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_request_rate_is_per_key_and_comes_back(service_env, tmp_path):
    per_minute = 20  # one request back every 3 s
    with (
        quota_api(service_env, tmp_path / "api.log", quota_requests_per_minute=per_minute) as api,
        client(api.url, "alice") as alice,
        client(api.url, "bob") as bob,
    ):
        started = time.monotonic()
        statuses = [alice.get("/jobs").status_code for _ in range(per_minute)]
        refused = alice.get("/jobs")
        assert time.monotonic() - started < 3, "too slow to exhaust the burst"
        assert statuses == [200] * per_minute
        detail = refusal(refused, 429, "requests_per_minute")
        assert detail["max"] == per_minute and detail["retry_after_s"] <= 3
        # Refusals spend nothing, so waiting Retry-After is enough.
        assert alice.post("/execute_code", json=EXECUTE).status_code == 429  # job POSTs too
        assert bob.get("/jobs").status_code == 200  # bob's budget is his own
        assert httpx.get(api.url + "/healthz").status_code == 200  # no key, no quota
        assert refusals_counted(api.url, "requests_per_minute") >= 2
        time.sleep(int(refused.headers["retry-after"]))
        assert alice.get("/jobs").status_code == 200


def test_concurrent_jobs_per_key_on_every_job_post(service_env, tmp_path):
    with (
        quota_api(service_env, tmp_path / "api.log", quota_concurrent_jobs=2) as api,
        client(api.url, "alice") as alice,
        client(api.url, "bob") as bob,
    ):
        first = alice.post("/execute_code", json=EXECUTE, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 202
        submit(alice)
        for path, body in JOB_POSTS:
            response = alice.post(path, json=body)
            if path.startswith("/v1/"):  # OpenAI's error shape there, same status and header
                assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
                assert response.json()["error"]["code"] == "rate_limit_exceeded"
                continue
            detail = refusal(response, 429, "concurrent_jobs")
            assert (detail["max"], detail["used"]) == (2, 2), path
        assert sql_count(service_env) == 2  # nothing refused was created
        repeat = alice.post("/execute_code", json=EXECUTE, headers={"Idempotency-Key": "k1"})
        assert repeat.status_code == 200 and repeat.json()["id"] == first.json()["id"]
        submit(bob)
        # A job that ends frees its slot.
        assert alice.post(f"/jobs/{first.json()['id']}/cancel").status_code == 202
        submit(alice)
        refusal(alice.post("/execute_code", json=EXECUTE), 429, "concurrent_jobs")
        assert refusals_counted(api.url, "concurrent_jobs") >= len(JOB_POSTS) + 1


def test_a_full_queue_answers_503_and_creates_no_job(service_env, tmp_path):
    with (
        quota_api(service_env, tmp_path / "api.log", queue_max_depth=3) as api,
        client(api.url, "alice") as alice,
        client(api.url, "bob") as bob,
    ):
        ids = [submit(alice), submit(bob), submit(alice)]
        detail = refusal(bob.post("/execute_code", json=EXECUTE), 503, "queue_depth")
        assert (detail["queue"], detail["max"], detail["used"]) == ("execute", 3, 3)
        refusal(alice.post("/lint_code", json=JOB_POSTS[2][1]), 503, "queue_depth")  # same queue
        assert sql_count(service_env, "queue = 'execute'") == 3
        submit(bob, "/search_code", {"query": "q"})  # another queue has room
        assert alice.post(f"/jobs/{ids[0]}/cancel").status_code == 202
        submit(bob)
        assert sql_count(service_env, "queue = 'execute'") == 4  # 3 waiting, 1 cancelled
        assert refusals_counted(api.url, "queue_depth") >= 2


def test_redis_down_never_500s_and_the_rate_limit_comes_back(service_env, tmp_path):
    redis_server = RedisProcess(tmp_path / "redis")
    env = {**service_env, "CODELOOP_REDIS_URL": redis_server.url}
    per_minute = 5
    try:
        with (
            quota_api(env, tmp_path / "api.log", quota_requests_per_minute=per_minute) as api,
            client(api.url, "alice") as alice,
        ):
            job_id = submit(alice)
            redis_server.stop()
            # The limiter fails open: SQL still answers reads and accepts work.
            for _ in range(3 * per_minute):
                response = alice.get(f"/jobs/{job_id}")
                assert response.status_code == 200, response.text
            accepted = alice.post("/execute_code", json=EXECUTE)
            assert accepted.status_code == 202, accepted.text
            redis_server.start()  # empty: the key's budget starts over

            def limited() -> bool:
                status = alice.get("/jobs").status_code
                assert status in (200, 429)
                return status == 429

            wait_until(limited, 20, interval=0.2, what="the rate limit back")
    finally:
        redis_server.stop()


def test_tokens_per_day_on_generations_only(platform, tmp_path):
    tokens = 8
    with (
        quota_api(platform.env, tmp_path / "api.log", quota_tokens_per_day=tokens) as api,
        client(api.url, "alice") as alice,
        client(api.url, "bob") as bob,
    ):
        body = {"task": "add two numbers", "max_new_tokens": tokens, "temperature": 0,
                "use_tools": False, "use_memory": False, "reuse": False}  # fmt: skip
        job_id = submit(alice, "/generate_code", body)
        job = alice.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        assert job["status"] == "succeeded", job
        assert job["result"]["usage"]["completion_tokens"] == tokens

        refused = alice.post("/generate_code", json=body)
        detail = refusal(refused, 429, "tokens_per_day")
        assert (detail["max"], detail["used"]) == (tokens, tokens)
        midnight = datetime.fromisoformat(detail["resets_at"])
        assert midnight == datetime.now(UTC).replace(
            hour=0, minute=0, second=0, microsecond=0
        ) + timedelta(days=1)
        to_midnight = (midnight - datetime.now(UTC)).total_seconds()
        assert abs(int(refused.headers["retry-after"]) - math.ceil(to_midnight)) <= 5
        chat = alice.post("/v1/chat/completions", json=CHAT)
        assert chat.status_code == 429 and "retry-after" in chat.headers
        submit(alice)  # executions spend no tokens
        bob_job = submit(bob, "/generate_code", body)  # bob's tokens are his own

        # The day is SQL's: once alice's generation is yesterday's, her budget is back.
        engine = platform.sql()
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE jobs SET created_at = :at WHERE id = :id"),
                {"at": datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1), "id": job_id},
            )
        engine.dispose()
        submit(alice, "/generate_code", body)
        assert bob.get(f"/jobs/{bob_job}", params={"wait": 30}).json()["status"] == "succeeded"


def test_the_old_setting_name_still_sets_concurrent_jobs(monkeypatch):
    from app.core.config import Settings

    monkeypatch.setenv("CODELOOP_MAX_QUEUED_JOBS_PER_OWNER", "7")
    assert Settings().quota_concurrent_jobs == 7
    monkeypatch.setenv("CODELOOP_QUOTA_CONCURRENT_JOBS", "9")  # the new name wins
    assert Settings().quota_concurrent_jobs == 9
