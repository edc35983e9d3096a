"""Bad input gets a 4xx in SPEC's error shape, never a 500, and nothing is queued."""

from __future__ import annotations

import pytest

from tests.conftest import Platform


def assert_error(response, status: int, type_: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "detail"}
    assert body["error"]["type"] == type_
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "x", "language": "cobol"}, "language"),
        ({"task": ""}, "task"),
        ({"language": "python"}, "task"),
        ({"task": "x", "temperature": 2.5}, "temperature"),
        ({"task": "x", "temperature": -1}, "temperature"),
        ({"task": "x", "top_p": 0}, "top_p"),
        ({"task": "x", "max_new_tokens": 0}, "max_new_tokens"),
        ({"task": "x", "max_new_tokens": 100_000}, "max_new_tokens"),
        ({"task": "x", "repetition_penalty": 9}, "repetition_penalty"),
        ({"task": "x", "unknown": 1}, "unknown"),
        ({"task": 5}, "task"),
    ],
)
def test_invalid_generate_requests_are_422(platform: Platform, body, field):
    with platform.client() as http:
        error = assert_error(http.post("/generate_code", json=body), 422, "invalid_input")
    assert any(field in [str(p) for p in d["loc"]] or field in d["msg"] for d in error["detail"])


def test_malformed_json_is_400(platform: Platform):
    with platform.client() as http:
        response = http.post(
            "/generate_code", content=b'{"task": ', headers={"content-type": "application/json"}
        )
    assert_error(response, 400, "bad_request")


def test_oversized_task_is_413_and_oversized_body_is_413(platform: Platform):
    with platform.client() as http:
        error = assert_error(
            http.post("/generate_code", json={"task": "x" * 20_001}), 413, "payload_too_large"
        )
        assert error["detail"]["field"] == "task"
        huge = b'{"task": "' + b"y" * 2_000_000 + b'"}'
        assert_error(
            http.post("/generate_code", content=huge, headers={"content-type": "application/json"}),
            413, "payload_too_large",
        )  # fmt: skip


def test_execute_caps_are_422_not_clamped(platform: Platform):
    with platform.client() as http:
        assert_error(
            http.post("/execute_code", json={"language": "python", "code": "1", "timeout_s": 999}),
            422, "invalid_input",
        )  # fmt: skip
        too_much = {"language": "python", "code": "1", "memory_mb": 10**6}
        assert_error(http.post("/execute_code", json=too_much), 422, "invalid_input")


def test_unknown_things_are_404_and_bad_queries_4xx(platform: Platform):
    with platform.client() as http:
        assert_error(http.get("/jobs/not-a-job"), 404, "not_found")
        assert_error(http.get("/jobs/not-a-job/events"), 404, "not_found")
        assert_error(http.post("/jobs/not-a-job/cancel"), 404, "not_found")
        assert_error(http.get("/no/such/route"), 404, "not_found")
        assert_error(http.get("/jobs", params={"status": "bogus"}), 422, "invalid_input")
        assert_error(http.get("/jobs", params={"limit": 1000}), 422, "invalid_input")
        assert_error(http.get("/jobs", params={"cursor": "!!!"}), 400, "bad_request")
        assert_error(http.delete("/generate_code"), 405, "method_not_allowed")
        assert_error(http.get("/jobs/x", params={"wait": -1}), 422, "invalid_input")


def test_health_readiness_docs_and_metrics(platform: Platform):
    with platform.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
        assert set(ready.json()["checks"].values()) == {"ok"}  # every queue has a worker
        assert http.get("/docs").status_code == 200
        spec = http.get("/openapi.json").json()
        assert "/generate_code" in spec["paths"] and "/jobs/{job_id}/events" in spec["paths"]
        metrics = http.get("/metrics").text
    assert "codeloop_queue_depth" in metrics and "codeloop_jobs" in metrics
