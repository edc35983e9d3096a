"""Webhooks end to end: a real API, real Celery workers (execute, maintenance), a real
HTTP receiver on 127.0.0.1, SQLite.

Two stacks: one whose maintenance worker may deliver to private addresses (so the
loopback receiver can be reached), one with the allowance off, which must refuse every
form of a loopback address without a single request reaching the receiver.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session

from app.core import names
from app.core.celery_config import make_producer
from app.core.config import Settings
from app.core.models import Job, utcnow
from tests.conftest import Platform, platform_env, running_platform, wait_until
from tests.support import ROOT
from tests.webhook_receiver import Receiver, running_receiver

SECRET = secrets.token_urlsafe(32)


def readme_verifier() -> Any:
    """The verification snippet of README.md's Webhooks section, run as printed."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    [snippet] = [b for b in blocks if "def verify_codeloop_signature" in b]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    return namespace["verify_codeloop_signature"]


verify_signature = readme_verifier()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def _stack(
    redis_server: str, model_dir: Path, root: Path, db_index: int, **extra: str
) -> dict[str, str]:
    env = platform_env(redis_server, root, model_dir, db_index)
    env.update({
        "CODELOOP_WEBHOOK_SECRET": SECRET, "CODELOOP_WEBHOOK_BACKOFF_S": "0.3",
        "CODELOOP_WEBHOOK_MAX_ATTEMPTS": "3", "CODELOOP_WEBHOOK_TIMEOUT_S": "3", **extra,
    })  # fmt: skip
    return env


@pytest.fixture(scope="module")
def allowed(redis_server, tiny_model_dir, tmp_path_factory) -> Iterator[Platform]:
    """Execute and maintenance workers; webhooks to private addresses allowed. No
    search worker: a search job stays queued until it is cancelled."""
    root = tmp_path_factory.mktemp("webhooks-allowed")
    env = _stack(redis_server, tiny_model_dir, root, 11, CODELOOP_WEBHOOK_ALLOW_PRIVATE="true")
    workers = [("execute", 1, "whexe@%h"), ("maintenance", 1, "whmnt@%h")]
    with running_platform(env, root, workers) as running:
        yield running


@pytest.fixture(scope="module")
def guarded(redis_server, tiny_model_dir, tmp_path_factory) -> Iterator[Platform]:
    """A maintenance worker with the private allowance off (the default)."""
    root = tmp_path_factory.mktemp("webhooks-guarded")
    env = _stack(redis_server, tiny_model_dir, root, 12)
    with running_platform(env, root, [("maintenance", 1, "whguard@%h")]) as running:
        yield running


def wait_webhook(http: httpx.Client, job_id: str, status: str, timeout: float = 30) -> dict:
    def settled() -> dict | None:
        job = http.get(f"/jobs/{job_id}").json()
        return job if job["webhook"]["status"] == status else None

    return wait_until(settled, timeout, interval=0.1, what=f"webhook {status}")


def send_reconcile(platform: Platform) -> None:
    """What beat does every RECONCILE_INTERVAL_S (no beat runs in these stacks)."""
    producer = make_producer(Settings(redis_url=platform.env["CODELOOP_REDIS_URL"]))
    try:
        producer.send_task(names.TASK_RECONCILE, queue=names.QUEUE_MAINTENANCE)
    finally:
        producer.close()


def insert_job(platform: Platform, **values: Any) -> str:
    """A row as a process that died mid-way would have left it."""
    engine = platform.sql()
    try:
        with Session(engine) as session:
            job = Job(kind="execute", queue=names.QUEUE_EXECUTE, owner="anonymous",
                      request={"language": "python", "code": "print(1)"}, **values)  # fmt: skip
            session.add(job)
            session.commit()
            return job.id
    finally:
        engine.dispose()


def assert_signed(request_headers: dict[str, str], body: bytes) -> None:
    header = request_headers["X-Codeloop-Signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header), header
    assert verify_signature(SECRET, header, body)
    assert not verify_signature("another-secret-entirely", header, body)
    assert not verify_signature(SECRET, header, body + b" ")
    stale = re.sub(r"t=\d+", f"t={int(time.time()) - 3600}", header)
    assert not verify_signature(SECRET, stale, body)


def test_a_finished_job_is_posted_signed_and_recorded(allowed: Platform, receiver: Receiver):
    with allowed.client() as http:
        url = receiver.url("/done")
        submitted = http.post(
            "/execute_code", json={"language": "python", "code": "print(42)", "callback_url": url}
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        assert submitted.json()["webhook"]["status"] == "pending"
        assert "callback_url" not in submitted.json()["request"]  # the worker never sees it
        assert http.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"
        job = wait_webhook(http, job_id, "delivered")
    [got] = receiver.to("/done")
    assert_signed(got.headers, got.body)
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Codeloop-Job-Id"] == job_id
    assert got.headers["X-Codeloop-Attempt"] == "1"
    posted = json.loads(got.body)
    assert posted["id"] == job_id and posted["status"] == "succeeded"
    assert posted["result"]["stdout"] == "42\n"
    assert posted["result"] == job["result"]
    webhook = job["webhook"]
    assert webhook["url"] == url and webhook["attempts"] == 1
    assert webhook["last_status_code"] == 200 and webhook["last_error"] is None
    assert webhook["delivered_at"] is not None and webhook["next_attempt_at"] is None
    assert SECRET not in json.dumps(job)


def test_a_cancelled_job_is_posted(allowed: Platform, receiver: Receiver):
    with allowed.client() as http:
        # No search worker in this stack: the job waits until it is cancelled.
        job = http.post(
            "/search_code", json={"query": "sort", "callback_url": receiver.url("/cancelled")}
        ).json()
        assert job["status"] == "queued"
        assert http.post(f"/jobs/{job['id']}/cancel").status_code == 202
        wait_webhook(http, job["id"], "delivered")
    [got] = receiver.to("/cancelled")
    assert_signed(got.headers, got.body)
    assert json.loads(got.body)["status"] == "cancelled"


def test_the_reconciler_failing_a_lost_job_posts_it(allowed: Platform, receiver: Receiver):
    old = utcnow() - timedelta(minutes=5)
    job_id = insert_job(
        allowed, status=names.RUNNING, attempts=3, started_at=old, updated_at=old,
        callback_url=receiver.url("/failed"), webhook_status="pending",
    )  # fmt: skip
    send_reconcile(allowed)
    with allowed.client() as http:
        job = wait_webhook(http, job_id, "delivered")
    assert job["status"] == "failed" and job["error"]["type"] == "worker_lost"
    [got] = receiver.to("/failed")
    assert_signed(got.headers, got.body)
    assert json.loads(got.body)["error"]["type"] == "worker_lost"


def test_a_final_job_whose_finisher_died_before_queueing_is_swept(
    allowed: Platform, receiver: Receiver
):
    old = utcnow() - timedelta(minutes=5)
    job_id = insert_job(
        allowed, status=names.SUCCEEDED, attempts=1, started_at=old, finished_at=old,
        updated_at=old, result={"status": "ok"}, callback_url=receiver.url("/swept"),
        webhook_status="pending",
    )  # fmt: skip
    send_reconcile(allowed)
    with allowed.client() as http:
        wait_webhook(http, job_id, "delivered")
    assert len(receiver.to("/swept")) == 1


def test_5xx_is_retried_with_backoff_until_it_succeeds(allowed: Platform, receiver: Receiver):
    receiver.script("/flaky", 500, (503, {"Retry-After": "0"}), 200)
    with allowed.client() as http:
        job_id = http.post("/execute_code", json={
            "language": "python", "code": "print(1)", "callback_url": receiver.url("/flaky"),
        }).json()["id"]  # fmt: skip
        job = wait_webhook(http, job_id, "delivered")
    got = receiver.to("/flaky")
    assert [r.headers["X-Codeloop-Attempt"] for r in got] == ["1", "2", "3"]
    for request in got:
        assert_signed(request.headers, request.body)
    first_gap, second_gap = got[1].at - got[0].at, got[2].at - got[1].at
    assert first_gap >= 0.25 and second_gap >= 0.5, (first_gap, second_gap)  # 0.3 s, doubling
    webhook = job["webhook"]
    assert webhook["attempts"] == 3 and webhook["last_status_code"] == 200
    assert webhook["last_error"] is None


def test_a_receiver_that_keeps_failing_is_given_up_and_recorded(
    allowed: Platform, receiver: Receiver
):
    receiver.script("/down", 500)
    with allowed.client() as http:
        job_id = http.post("/execute_code", json={
            "language": "python", "code": "print(1)", "callback_url": receiver.url("/down"),
        }).json()["id"]  # fmt: skip
        webhook = wait_webhook(http, job_id, "failed")["webhook"]
    assert len(receiver.to("/down")) == 3  # WEBHOOK_MAX_ATTEMPTS
    assert webhook["attempts"] == 3 and webhook["last_status_code"] == 500
    assert webhook["last_error"] == "HTTP 500 (gave up after 3 attempts)"


@pytest.mark.parametrize(
    ("answer", "error"),
    [(400, "HTTP 400: refused by the receiver"),
     ((302, {"Location": "/elsewhere"}), "HTTP 302: redirects are not followed")],
)  # fmt: skip
def test_a_4xx_or_a_redirect_fails_at_once(allowed: Platform, receiver: Receiver, answer, error):
    path = f"/final-{secrets.token_hex(4)}"
    receiver.script(path, answer)
    with allowed.client() as http:
        job_id = http.post("/execute_code", json={
            "language": "python", "code": "print(1)", "callback_url": receiver.url(path),
        }).json()["id"]  # fmt: skip
        webhook = wait_webhook(http, job_id, "failed")["webhook"]
    assert len(receiver.to(path)) == 1 and receiver.to("/elsewhere") == []
    assert webhook["attempts"] == 1 and webhook["last_error"] == error


LOOPBACK_FORMS = [
    "127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1",
    "0177.0.0.1", "127.1",
]  # fmt: skip


def test_loopback_in_any_form_is_refused_without_the_allowance(
    guarded: Platform, receiver: Receiver
):
    paths = {}
    with guarded.client() as http:
        for i, host in enumerate(LOOPBACK_FORMS):
            path = f"/refused-{i}"
            url = f"http://{host}:{receiver.port}{path}"
            job = http.post("/search_code", json={"query": "q", "callback_url": url})
            assert job.status_code == 202, (host, job.text)
            assert http.post(f"/jobs/{job.json()['id']}/cancel").status_code == 202
            paths[job.json()["id"]] = (host, path)
        for job_id, (host, _path) in paths.items():
            webhook = wait_webhook(http, job_id, "failed")["webhook"]
            assert webhook["attempts"] == 1 and webhook["last_status_code"] is None, host
            error = webhook["last_error"]
            assert error.startswith("refused: ") and "loopback address" in error, (host, error)
            assert "CODELOOP_WEBHOOK_ALLOW_PRIVATE" in error
    assert [r.path for r in receiver.requests if r.path.startswith("/refused")] == []


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/hook", "http://user:pw@example.com/hook", "example.com/hook",
     "http://", "http:///nohost", "http://exa mple.com/", "https://example.com:99999/",
     "http://example.com/" + "a" * 2048, "javascript:alert(1)", "http://example.com/\n"],
)  # fmt: skip
def test_a_bad_callback_url_is_refused_at_submit(guarded: Platform, url: str):
    with guarded.client() as http:
        for route, body in (
            ("/execute_code", {"language": "python", "code": "print(1)"}),
            ("/generate_code", {"task": "x"}),
            ("/search_code", {"query": "x"}),
            ("/lint_code", {"language": "python", "code": "x = 1"}),
            ("/optimize/retriever", {"n_trials": 1}),
        ):
            response = http.post(route, json={**body, "callback_url": url})
            assert response.status_code == 422, (route, url, response.text)
            error = response.json()["error"]
            assert error["type"] == "invalid_input" and "callback_url" in error["message"]
        chat = http.post("/v1/chat/completions", json={
            "model": "codeloop", "messages": [{"role": "user", "content": "x"}],
            "callback_url": url,
        })  # fmt: skip
        assert chat.status_code == 400, chat.text
        assert "callback_url" in json.dumps(chat.json())
        jobs = http.get("/jobs").json()["items"]
    assert not any((j["webhook"] or {}).get("url") == url for j in jobs)
