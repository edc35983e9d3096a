"""`/metrics` shows what the workers measured: real generations, executions, searches."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Platform, wait_until
from tests.support import read_events


def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def finished(http: httpx.Client, job_id: str) -> dict:
    job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    assert job["status"] == "succeeded", job
    return job


TTFT = ("codeloop_time_to_first_token_seconds_count", ())
ITL = ("codeloop_inter_token_latency_seconds_count", ())
TOKENS = ("codeloop_generated_tokens_total", ())
WAIT_GENERATE = ("codeloop_queue_wait_seconds_count", (("kind", "generate"),))
SANDBOX_OK = ("codeloop_sandbox_runs_total", (("status", "ok"),))
SANDBOX_ERR = ("codeloop_sandbox_runs_total", (("status", "runtime_error"),))
QUERIES = ("codeloop_retriever_query_seconds_count", ())


def test_worker_figures_reach_the_api(platform: Platform) -> None:
    with platform.client() as http:
        before = scrape(http)
        created = http.post("/generate_code", json={"task": "add", "max_new_tokens": 24})
        job_id = created.json()["id"]
        events = read_events(http, f"/jobs/{job_id}/events")
        tokens = [e for e in events if e.event == "token"]
        usage = finished(http, job_id)["result"]["usage"]
        for code in ("print(1)", "raise SystemExit(3)"):
            finished(http, http.post("/execute_code", json={"language": "python", "code": code})
                     .json()["id"])  # fmt: skip
        finished(http, http.post("/search_code", json={"query": "add numbers"}).json()["id"])

        def grown() -> dict | None:
            now = scrape(http)
            ok = (
                now.get(TTFT, 0) >= before.get(TTFT, 0) + 1
                and now.get(SANDBOX_ERR, 0) >= before.get(SANDBOX_ERR, 0) + 1
                and now.get(QUERIES, 0) >= before.get(QUERIES, 0) + 1
            )
            return now if ok else None

        after = wait_until(grown, 30, interval=0.2, what="worker figures in /metrics")
    delta = {
        k: after.get(k, 0) - before.get(k, 0) for k in (ITL, TOKENS, SANDBOX_OK, WAIT_GENERATE)
    }
    assert delta[ITL] >= len(tokens) - 1
    assert delta[TOKENS] >= usage["completion_tokens"]
    assert delta[SANDBOX_OK] >= 1
    assert delta[WAIT_GENERATE] >= 1
    assert ("codeloop_generation_tokens_per_second_count", ()) in after


def test_the_agents_tool_calls_are_counted(scripted_platform: Platform) -> None:
    calls_ok = ("codeloop_tool_calls_total", (("name", "execute_code"), ("outcome", "ok")))
    duration = ("codeloop_tool_call_duration_seconds_count", (("name", "execute_code"),))
    with scripted_platform.client() as http:
        before = scrape(http)
        created = http.post("/generate_code", json={"task": "compute the answer"})
        result = finished(http, created.json()["id"])["result"]
        assert [c["name"] for c in result["tool_calls"]] == ["execute_code"]

        def counted() -> dict | None:
            now = scrape(http)
            return now if now.get(calls_ok, 0) >= before.get(calls_ok, 0) + 1 else None

        after = wait_until(counted, 30, interval=0.2, what="tool calls in /metrics")
    assert after.get(duration, 0) >= before.get(duration, 0) + 1
    assert after.get(SANDBOX_OK, 0) >= before.get(SANDBOX_OK, 0) + 1  # the call's child job
