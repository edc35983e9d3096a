"""The learning loop on the real bundled model, through the API: a task it gets wrong
without memory; a correct solution added to memory; the task, reworded, asked again
with tests now passes hidden tests; a generation rated 0.0 is never used again."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.support import ApiServer, Worker

pytestmark = pytest.mark.slow

TASK = (
    "Write a Python function `run_length_encode(s)` that returns the run-length encoding "
    "of s as letter-count pairs, e.g. 'aaabb' -> 'a3b2'."
)
REWORDED = (
    "Implement run_length_encode(s): compress a string by writing each letter followed by "
    "how many times it repeats in a row."
)
TESTS = "assert run_length_encode('aaabb') == 'a3b2'\nassert run_length_encode('') == ''\n"
HIDDEN = (
    "assert run_length_encode('abc') == 'a1b1c1'\n"
    "assert run_length_encode('zzzzzzzzzzzz') == 'z12'\n"
    "assert run_length_encode('aabba') == 'a2b2a1'\n"
)
SOLUTION = (
    "def run_length_encode(s):\n"
    "    out = []\n"
    "    for ch in s:\n"
    "        if out and out[-1][0] == ch:\n"
    "            out[-1][1] += 1\n"
    "        else:\n"
    "            out.append([ch, 1])\n"
    "    return ''.join(f'{ch}{n}' for ch, n in out)\n"
)


def wait(http: httpx.Client, job_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    return job


def passes_hidden_tests(http: httpx.Client, code: str) -> bool:
    run = http.post("/execute_code", json={"language": "python", "code": f"{code}\n\n{HIDDEN}"})
    assert run.status_code == 202, run.text
    return bool(wait(http, run.json()["id"], 120)["result"]["status"] == "ok")


def test_memory_makes_the_bundled_model_pass(service_env, tmp_path, bundled_data_dir):
    env = {**service_env, "CODELOOP_MODEL_ID": "bundled",
           "CODELOOP_DATA_DIR": str(bundled_data_dir), "CODELOOP_TORCH_THREADS": "2"}  # fmt: skip
    workers = [
        Worker(env, "generate,search", 1, tmp_path / "generate.log", name="learn@%h"),
        Worker(env, "execute", 1, tmp_path / "execute.log", name="learnx@%h"),
    ]
    api = ApiServer(env, free_port(), tmp_path / "api.log")
    ask = {"language": "python", "tests": TESTS, "temperature": 0, "max_new_tokens": 160,
           "max_repair_rounds": 0}  # fmt: skip
    try:
        api.wait_ready()
        for worker in workers:
            worker.wait_ready(timeout=300)  # the first load converts the GGUF (~20-30 s)
        with httpx.Client(base_url=api.url, timeout=60) as http:
            first = wait(http, http.post("/generate_code", json={"task": TASK, **ask}).json()["id"])
            wrong = first["result"]
            assert wrong["source"] == "model"
            assert wrong["verification"]["status"] == "failed"
            assert not passes_hidden_tests(http, wrong["code"])
            rated = http.post(
                "/feedback", json={"generation_id": wrong["generation_id"], "score": 0}
            )
            assert rated.status_code == 201

            knowledge = {"language": "python", "title": "Run-length encoding", "content": SOLUTION}
            added = http.post("/knowledge", json=knowledge)
            assert added.status_code == 201, added.text
            second = wait(
                http, http.post("/generate_code", json={"task": REWORDED, **ask}).json()["id"]
            )
            result = second["result"]
            assert result["verification"]["status"] == "passed", result
            assert passes_hidden_tests(http, result["code"])
    finally:
        api.stop()
        for worker in workers:
            worker.stop()
    assert result["source"] == "memory"
    assert result["reused_from"] == {"source": "knowledge", "id": added.json()["id"]}
    assert result["usage"]["completion_tokens"] == 0
    assert wrong["generation_id"] not in {c["id"] for c in result["context"]}
