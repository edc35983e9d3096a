"""What the OpenAI surface costs: `/v1/chat/completions` streaming vs `/generate_code`
streaming, on one stack, same model, task, greedy decoding and token count.

Runs alternate between the two (so a busy machine slows both alike), after one warm-up
each. Each run is timed at the client from its first streamed token to its last:
tokens/s = (completion_tokens - 1) / that span. Also reports submit → first token.
Both clients parse every event's JSON, as a real client does. Usage:

    python -m bench.openai_overhead [--runs 10] [--tokens 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._stack import percentile, stack
from tests.support import build_test_model, parse_sse

TASK = "Write a Python function that parses a CSV line with quoted fields."


def via_generate(http: httpx.Client, tokens: int) -> dict[str, float]:
    body = {"task": TASK, "language": "python", "max_new_tokens": tokens, "temperature": 0,
            "stream": True}  # fmt: skip
    started = time.perf_counter()
    first = last = 0.0
    done: dict[str, Any] = {}
    with http.stream("POST", "/generate_code", json=body) as response:
        for event in parse_sse(response.iter_lines()):
            if event.event == "token":
                last = time.perf_counter()
                first = first or last
            elif event.event == "done":
                done = event.data
    return _figures(started, first, last, done["usage"])


def via_openai(http: httpx.Client, tokens: int) -> dict[str, float]:
    body = {"model": "codeloop", "messages": [{"role": "user", "content": TASK}],
            "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first = last = 0.0
    usage: dict[str, Any] = {}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    return _figures(started, first, last, usage)


def _figures(started: float, first: float, last: float, usage: dict[str, Any]) -> dict[str, float]:
    assert first and last > first, "no tokens streamed"
    n = int(usage["completion_tokens"])
    return {"tokens": n, "prompt_tokens": int(usage["prompt_tokens"]),
            "tok_s": (n - 1) / (last - first), "first_ms": (first - started) * 1000}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=400)
    args = parser.parse_args()
    tiny = build_test_model(Path(tempfile.mkdtemp(prefix="tiny-")))
    sides = {"generate_code": via_generate, "openai": via_openai}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    with (
        stack(str(tiny), [("generate", 1)]) as s,
        httpx.Client(base_url=s.api.url if s.api else "", timeout=300) as http,
    ):
        for run in sides.values():
            run(http, args.tokens)  # warm-up
        for _ in range(args.runs):
            for name, run in sides.items():
                runs[name].append(run(http, args.tokens))
    figures: dict[str, Any] = {"model": "tiny", "runs": args.runs}
    for name, results in runs.items():
        figures[name] = {
            "tokens": results[0]["tokens"],
            "prompt_tokens": results[0]["prompt_tokens"],
            "tok_s": round(statistics.median(r["tok_s"] for r in results), 1),
            "first_token_ms_p50": round(percentile([r["first_ms"] for r in results], 50), 1),
        }
    ratio = figures["openai"]["tok_s"] / figures["generate_code"]["tok_s"]
    figures["ratio"] = round(ratio, 3)
    for name in sides:
        f = figures[name]
        print(f"{name:14} {f['tokens']} tokens ({f['prompt_tokens']} prompt): {f['tok_s']:7.1f} "
              f"tok/s, submit→first token {f['first_token_ms_p50']} ms (p50)")  # fmt: skip
    print(f"ratio /v1 ÷ /generate_code: {figures['ratio']:.3f}")
    print(json.dumps({"bench": "openai_overhead", **figures}))


if __name__ == "__main__":
    main()
