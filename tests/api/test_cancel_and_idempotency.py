"""Cancelling queued, running and finished jobs; Idempotency-Key."""

from __future__ import annotations

import threading
import uuid

from tests.conftest import Platform, wait_until
from tests.support import read_events


def test_cancel_running_generation_stops_and_keeps_partial_text(platform: Platform):
    with platform.client() as http:
        job_id = http.post(
            "/generate_code", json={"task": "long", "max_new_tokens": 1500, "temperature": 0}
        ).json()["id"]
        first = read_events(http, f"/jobs/{job_id}/events", stop_after=5)
        assert first[-1].event == "token"
        cancel = http.post(f"/jobs/{job_id}/cancel")
        assert cancel.status_code == 202
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        events = read_events(http, f"/jobs/{job_id}/events")
    assert job["status"] == "cancelled"
    result = job["result"]
    assert result["finish_reason"] == "cancelled"
    assert 0 < result["usage"]["completion_tokens"] < 1500
    tokens = [e for e in events if e.event == "token"]
    assert "".join(e.data["text"] for e in tokens) == result["text"]
    assert events[-1].event == "status" and events[-1].data["status"] == "cancelled"


def test_cancel_queued_job_and_cancel_finished_job(platform: Platform):
    with platform.client() as http:
        # Occupy the only generate slot so the second job has to wait.
        blocker = http.post(
            "/generate_code", json={"task": "block", "max_new_tokens": 1500, "temperature": 0}
        ).json()["id"]
        wait_until(lambda: http.get(f"/jobs/{blocker}").json()["status"] == "running", 30,
                   what="blocker running")  # fmt: skip
        queued = http.post("/generate_code", json={"task": "wait", "max_new_tokens": 5}).json()
        assert queued["status"] == "queued" and queued["queue_position"] == 1
        cancelled = http.post(f"/jobs/{queued['id']}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        events = read_events(http, f"/jobs/{queued['id']}/events")
        assert [e.event for e in events] == ["status"]
        assert events[0].data["status"] == "cancelled"

        assert http.post(f"/jobs/{blocker}/cancel").status_code == 202
        assert http.get(f"/jobs/{blocker}", params={"wait": 30}).json()["status"] == "cancelled"
        # The cancelled queued job never runs, even after the worker frees up.
        assert http.get(f"/jobs/{queued['id']}").json()["attempts"] == 0

        again = http.post(f"/jobs/{queued['id']}/cancel")
        assert again.status_code == 409
        assert again.json()["error"]["type"] == "conflict"


def test_idempotency_key_returns_the_first_job(platform: Platform):
    key = str(uuid.uuid4())
    body = {"task": "idempotent", "max_new_tokens": 3}
    with platform.client() as http:
        first = http.post("/generate_code", json=body, headers={"Idempotency-Key": key})
        second = http.post("/generate_code", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 202 and second.status_code == 200
        assert first.json()["id"] == second.json()["id"]

        # Concurrent repeats still make exactly one job.
        key2 = str(uuid.uuid4())
        ids: list[str] = []
        lock = threading.Lock()

        def post() -> None:
            response = http.post("/generate_code", json=body, headers={"Idempotency-Key": key2})
            with lock:
                ids.append(response.json()["id"])

        threads = [threading.Thread(target=post) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(ids)) == 1
        too_long = http.post("/generate_code", json=body, headers={"Idempotency-Key": "k" * 201})
        assert too_long.status_code == 400


def test_list_jobs_newest_first_with_cursor(platform: Platform):
    with platform.client() as http:
        made = [
            http.post("/lint_code", json={"language": "python", "code": f"x = {i}\n"}).json()["id"]
            for i in range(5)
        ]
        page1 = http.get("/jobs", params={"kind": "lint", "limit": 3}).json()
        page2 = http.get(
            "/jobs", params={"kind": "lint", "limit": 3, "cursor": page1["next_cursor"]}
        ).json()
    listed = [j["id"] for j in page1["items"] + page2["items"]]
    assert listed[:5] == list(reversed(made))
    assert len(listed) == len(set(listed))
