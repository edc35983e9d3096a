"""The agent end to end on the scripted engine: Celery, Redis, SQL and the real sandbox
(the child execute jobs really run); only the model's text is scripted."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import Platform
from tests.support import read_events
from tests.workers.agent.conftest import CALL

TERMINAL = ("succeeded", "failed", "cancelled")


def generate(http: httpx.Client, body: dict[str, Any], wait: float = 90) -> dict[str, Any]:
    created = http.post("/generate_code", json={"language": "python", **body})
    assert created.status_code == 202, created.text
    return wait_job(http, created.json()["id"], wait)


def wait_job(http: httpx.Client, job_id: str, wait: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    while job["status"] not in TERMINAL:
        assert time.monotonic() < deadline, job
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    return job


def streamed_text(events: list[Any], round_no: int = 0) -> str:
    return "".join(
        e.data["text"] for e in events if e.event == "token" and e.data.get("round", 0) == round_no
    )


def test_a_tool_call_split_at_every_character_runs_in_the_sandbox(agent_platform: Platform):
    with agent_platform.client() as http:
        job = generate(http, {"task": "compute the answer", "use_memory": False})
        events = read_events(http, f"/jobs/{job['id']}/events")
        children = http.get("/jobs", params={"kind": "execute"}).json()["items"]
        detail = http.get(f"/generations/{job['result']['generation_id']}").json()
    assert job["status"] == "succeeded", job
    result = job["result"]
    shown = streamed_text(events)
    assert shown == "Let me run it. It is 42." == result["text"]
    assert "<" not in shown and "function" not in shown  # no markup ever reaches a client
    kinds = [e.event for e in events]
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("done")
    call = next(e.data for e in events if e.event == "tool_call")
    answer = next(e.data for e in events if e.event == "tool_result")
    assert call["name"] == "execute_code" and call["arguments"]["code"] == "print(6 * 7)"
    assert answer["ok"] is True and answer["result"]["result"]["stdout"] == "42\n"
    assert answer["call_id"] == call["call_id"]
    [listed] = result["tool_calls"]
    assert listed == {
        "call_id": call["call_id"],
        "name": "execute_code",
        "arguments": {"language": "python", "code": "print(6 * 7)"},
        "ok": True,
        "origin": "model",
        "duration_ms": listed["duration_ms"],
    }
    child_id = answer["result"]["result"]["job_id"]
    assert child_id in [c["id"] for c in children]  # a normal job, listed for its owner
    with agent_platform.sql().connect() as conn:
        parent = conn.execute(text("SELECT parent_id FROM jobs WHERE id=:i"), {"i": child_id})
        assert parent.scalar() == job["id"]
        audit = conn.execute(
            text("SELECT name, ok, origin, generation_id FROM function_calls WHERE job_id=:j"),
            {"j": job["id"]},
        ).all()
    assert [tuple(row) for row in audit] == [
        ("execute_code", True, "model", result["generation_id"])
    ]
    assert detail["tool_calls"][0]["call_id"] == call["call_id"]
    assert result["source"] == "model" and result["verification"]["status"] == "not_run"


def test_running_a_generations_code_is_recorded_as_its_feedback(agent_platform: Platform):
    with agent_platform.client() as http:
        job = generate(http, {"task": "anything at all", "use_memory": False})
        generation_id = job["result"]["generation_id"]
        run = http.post(
            "/execute_code",
            json={
                "language": "python",
                "code": "raise SystemExit(3)",
                "generation_id": generation_id,
            },
        )
        assert run.status_code == 202, run.text
        assert wait_job(http, run.json()["id"])["result"]["status"] == "runtime_error"
        detail = http.get(f"/generations/{generation_id}").json()
    assert detail["last_execution_status"] == "runtime_error"
    assert [e["job_id"] for e in detail["executions"]] == [run.json()["id"]]


def test_bad_calls_are_answered_with_errors_and_never_fail_the_job(agent_platform: Platform):
    with agent_platform.client() as http:
        job = generate(http, {"task": "bad calls", "use_memory": False})
        events = read_events(http, f"/jobs/{job['id']}/events")
    assert job["status"] == "succeeded", job
    assert job["result"]["text"] == "All done."
    results = [e.data for e in events if e.event == "tool_result"]
    assert [r["ok"] for r in results] == [False, False, False]
    errors = [r["result"]["error"] for r in results]
    assert "not a JSON object" in errors[0]
    assert "unknown tool 'rm_rf'" in errors[1]
    assert "unknown language 'cobol'" in errors[2]
    assert streamed_text(events) == "All done."


def test_endless_calls_are_bounded_and_repeats_not_rerun(agent_platform: Platform):
    with agent_platform.client() as http:
        job = generate(http, {"task": "call forever", "use_memory": False, "max_tool_calls": 2})
    assert job["status"] == "succeeded", job
    calls = job["result"]["tool_calls"]
    assert [c["ok"] for c in calls] == [True, False, False, False]
    with agent_platform.sql().connect() as conn:
        rows = conn.execute(
            text("SELECT result FROM function_calls WHERE job_id=:j ORDER BY id"),
            {"j": job["id"]},
        ).scalars()
        summaries = [str(r) for r in rows]
    assert "identical to call" in summaries[1]
    assert "limit of 2 tool calls" in summaries[2]


def test_a_tool_that_runs_too_long_times_out_and_its_child_is_cancelled(
    agent_platform: Platform,
):
    with agent_platform.client() as http:
        started = time.monotonic()
        job = generate(http, {"task": "sleep in the sandbox", "use_memory": False})
        took = time.monotonic() - started
        events = read_events(http, f"/jobs/{job['id']}/events")
        result = next(e.data for e in events if e.event == "tool_result")
        child = http.get("/jobs", params={"kind": "execute", "limit": 1}).json()["items"][0]
        child = wait_job(http, child["id"], 30)
    assert job["status"] == "succeeded" and job["result"]["text"] == "Gave up."
    assert result["ok"] is False and "timed out" in result["result"]["error"]
    assert took < 25
    assert child["status"] == "cancelled" or child["result"]["status"] != "ok"


def test_tool_output_is_capped_with_head_and_tail(agent_platform: Platform):
    with agent_platform.client() as http:
        job = generate(http, {"task": "print a lot", "use_memory": False})
        events = read_events(http, f"/jobs/{job['id']}/events")
    result = next(e.data for e in events if e.event == "tool_result")
    capped = result["result"]["truncated_output"]
    assert len(capped) <= 2000
    assert capped.startswith('{"result": {"status": "ok"') and "truncated" in capped
    assert capped.rstrip().endswith("}")  # the tail is kept too


def test_one_token_budget_across_turns(agent_platform: Platform):
    with agent_platform.client() as http:
        job = generate(http, {"task": "long answer", "use_memory": False, "max_new_tokens": 40})
    result = job["result"]
    assert result["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 40
    assert len(result["tool_calls"]) == 1


def test_use_tools_false_streams_the_text_as_written(agent_platform: Platform):
    with agent_platform.client() as http:
        job = generate(
            http, {"task": "compute the answer", "use_memory": False, "use_tools": False}
        )
        events = read_events(http, f"/jobs/{job['id']}/events")
    assert "tool_call" not in [e.event for e in events]
    assert streamed_text(events) == "Let me run it. " + CALL
    assert job["result"]["tool_calls"] == []


def test_stop_strings_end_the_answer_before_them(agent_platform: Platform):
    with agent_platform.client() as http:
        job = generate(http, {"task": "stop early", "use_memory": False, "stop": ["STOP"]})
        events = read_events(http, f"/jobs/{job['id']}/events")
    assert job["result"]["text"] == "alpha beta " == streamed_text(events)
    assert job["result"]["finish_reason"] == "stop"


def test_verify_and_repair_until_the_tests_pass(agent_platform: Platform):
    body = {"task": "add two numbers", "tests": "assert add(2, 3) == 5\n", "reuse": False}
    with agent_platform.client() as http:
        job = generate(http, body)
        events = read_events(http, f"/jobs/{job['id']}/events")
        detail = http.get(f"/generations/{job['result']['generation_id']}").json()
    result = job["result"]
    assert job["status"] == "succeeded", job
    assert result["verification"]["status"] == "passed"
    assert result["verification"]["rounds"] == 1
    assert result["verification"]["last"]["status"] == "ok"
    assert "a + b" in result["code"]
    assert [c["origin"] for c in result["tool_calls"]] == ["agent", "agent"]
    assert [c["ok"] for c in result["tool_calls"]] == [True, True]
    assert "a - b" in streamed_text(events, 0) and "a + b" in streamed_text(events, 1)
    assert [r["verification"] for r in detail["rounds"]] == ["failed", "passed"]
    assert detail["verification_status"] == "passed"
    assert detail["last_execution_status"] == "ok"
    assert len(detail["executions"]) == 2  # both runs are the generation's executions


def test_repair_rounds_run_out(agent_platform: Platform):
    body = {"task": "never right", "tests": "assert add(2, 3) == 5", "max_repair_rounds": 1}
    with agent_platform.client() as http:
        job = generate(http, {**body, "reuse": False})
    verification = job["result"]["verification"]
    assert job["status"] == "succeeded"
    assert verification["status"] == "failed" and verification["rounds"] == 1
    assert verification["last"]["status"] == "runtime_error"
    assert "AssertionError" in verification["last"]["stderr"]


def test_verified_reuse_answers_from_memory_without_spending_tokens(agent_platform: Platform):
    solution = (
        "def multiply_matrices(a, b):\n"
        "    return [[sum(x * y for x, y in zip(r, c)) for c in zip(*b)] for r in a]\n"
    )
    tests = "assert multiply_matrices([[1, 2]], [[3], [4]]) == [[11]]\n"
    with agent_platform.client() as http:
        created = http.post(
            "/knowledge",
            json={"language": "python", "title": "Multiply two matrices", "content": solution},
        )
        assert created.status_code == 201, created.text
        knowledge_id = created.json()["id"]
        job = generate(
            http, {"task": "write a function that multiplies two matrices", "tests": tests}
        )
        events = read_events(http, f"/jobs/{job['id']}/events")
        off = generate(
            http,
            {"task": "write a function that multiplies two matrices", "tests": tests,
             "reuse": False, "max_repair_rounds": 0},
        )  # fmt: skip
    result = job["result"]
    assert result["source"] == "memory", result
    assert result["reused_from"] == {"source": "knowledge", "id": knowledge_id}
    assert result["usage"]["completion_tokens"] == 0
    assert result["verification"]["status"] == "passed"
    assert result["code"].strip() == solution.strip()
    assert streamed_text(events) == result["text"]  # the answer still streams
    assert off["result"]["source"] == "model"
    assert knowledge_id in [c["id"] for c in off["result"]["context"]]  # memory as context


def test_a_generation_rated_zero_is_never_context_nor_reused(agent_platform: Platform):
    body = {
        "task": "reverse the words of a sentence",
        "tests": "assert reverse_words('a b') == 'b a'",
    }
    with agent_platform.client() as http:
        first = generate(http, body)
        assert first["result"]["verification"]["status"] == "passed"  # a reusable solution…
        again = generate(http, body)
        assert again["result"]["source"] == "memory"  # …that is reused,
        for job in (first, again):  # until users rate it (and its copy) 0.0
            rated = http.post(
                "/feedback", json={"generation_id": job["result"]["generation_id"], "score": 0.0}
            )
            assert rated.status_code == 201
        third = generate(http, body)
    bad = {first["result"]["generation_id"], again["result"]["generation_id"]}
    assert not bad & {c["id"] for c in third["result"]["context"]}
    assert third["result"]["source"] == "model"
    assert third["result"]["verification"]["status"] == "passed"


def test_memory_goes_into_the_prompt_unless_use_memory_is_false(agent_platform: Platform):
    content = "def slugify_title(text):\n    return '-'.join(text.lower().split())\n"
    with agent_platform.client() as http:
        created = http.post(
            "/knowledge",
            json={"language": "python", "title": "Slugify a blog title", "content": content},
        )
        assert created.status_code == 201, created.text
        with_memory = generate(http, {"task": "slugify a blog post title"})
        without = generate(http, {"task": "slugify a blog post title", "use_memory": False})
        usage = http.get("/knowledge/get/python", params={"limit": 100}).json()
    items = with_memory["result"]["context"]
    mine = [i for i in items if i["id"] == created.json()["id"]]
    assert mine and mine[0]["source"] == "knowledge" and mine[0]["title"] == "Slugify a blog title"
    assert mine[0]["tokens"] > 0 and 0 < mine[0]["score"] <= 1.5
    assert without["result"]["context"] == []
    used = next(i for i in usage["items"] if i["id"] == created.json()["id"])
    assert used["usage_count"] == 1  # counted once: the use_memory=false job did not


def test_client_tools_end_the_job_with_a_tool_call(agent_platform: Platform):
    """What the OpenAI surface sends: a tool the caller runs itself."""
    from sqlalchemy.orm import Session

    from app.core import db, jobs
    from app.core.celery_config import make_producer
    from app.core.config import Settings

    settings = Settings(
        redis_url=agent_platform.env["CODELOOP_REDIS_URL"],
        database_url=agent_platform.env["CODELOOP_DATABASE_URL"],
    )
    engine = db.make_engine(settings.database_url)
    tool = {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object"}}
    with Session(engine) as session:
        job, _ = jobs.create_job(
            session,
            kind="generate",
            owner="anonymous",
            request={"task": "client weather", "language": "python", "use_memory": False,
                     "use_tools": False, "client_tools": [tool], "max_new_tokens": 64},
        )  # fmt: skip
        jobs.dispatch(session, make_producer(settings), agent_platform.redis(), job, 600)
        job_id = job.id
    engine.dispose()
    with agent_platform.client() as http:
        done = wait_job(http, job_id)
        events = read_events(http, f"/jobs/{job_id}/events")
    result = done["result"]
    assert result["finish_reason"] == "tool_calls"
    [call] = result["tool_calls"]
    assert call["name"] == "get_weather" and call["arguments"] == {"city": "Oslo"}
    assert call["origin"] == "client" and call["ok"] is None
    assert [e.data["origin"] for e in events if e.event == "tool_call"] == ["client"]
    assert "tool_result" not in [e.event for e in events]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"max_tool_calls": 17}, 422, "max_tool_calls"),
        ({"max_tool_calls": -1}, 422, "max_tool_calls"),
        ({"max_repair_rounds": 6}, 422, "max_repair_rounds"),
        ({"max_repair_rounds": 1.5}, 422, "max_repair_rounds"),
        ({"use_tools": "yes"}, 422, "use_tools"),
        ({"use_memory": 1}, 422, "use_memory"),
        ({"reuse": "false"}, 422, "reuse"),
        ({"context_budget_tokens": -5}, 422, "context_budget_tokens"),
        ({"stop": ["a"] * 5}, 422, "stop"),
        ({"tests": "x" * 300_000}, 413, "tests"),
    ],
)
def test_bad_agent_fields_are_refused_with_the_error_shape(
    agent_platform: Platform, body: dict[str, Any], status: int, field: str
):
    with agent_platform.client() as http:
        response = http.post("/generate_code", json={"task": "t", "language": "python", **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "detail"}
    assert field in response.text
