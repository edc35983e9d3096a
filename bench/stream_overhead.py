"""What streaming through the service costs: in-process `generate` vs API + Redis + SSE.

Same model, prompt, greedy decoding and token count on both sides, measured in one run:
(a) `generate_stream` in this process; (b) the same generation as a job, followed as SSE
by a client. (a) is timed from the call to its last token; (b) from the moment the
worker started the job (its `started_at`) to the last token at the client, so the
service's own work (claim, prompt, events, relay) counts and a client that the OS
schedules late cannot shorten the span. The job runs with the agent's memory and tools
off, so both sides decode the same prompt (the prompt token counts are checked). Runs
alternate between the two sides. Reports tokens/s of both (median) and their ratio,
and the first-token delay the service adds (p50). Usage:

    python -m bench.stream_overhead [--runs 10] [--tiny-tokens 400] [--bundled-tokens 96]
                                    [--skip-bundled]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._stack import percentile, stack
from tests.support import build_test_model, parse_sse

TASK = "Write a Python function that parses a CSV line with quoted fields."
Run = dict[str, float]
# After a job the worker still indexes the generation (after `done`): let it finish
# before the next in-process run, which would otherwise share the CPU with it.
SETTLE_S = 1.0


def in_process_runner(model_id: str, tokens: int, data_dir: Path) -> Callable[[], Run]:
    """Loads the model here; each call is one in-process generation."""
    import torch

    from workers.llm import SamplingParams, code_messages, generate_stream, load_model_with_gpu

    torch.set_num_threads(1)
    loaded = load_model_with_gpu(model_id, device="cpu", data_dir=data_dir)
    messages = code_messages(TASK, "python")
    params = SamplingParams(max_new_tokens=tokens, temperature=0)

    def run() -> Run:
        marks: list[float] = []
        started = time.perf_counter()
        outcome = generate_stream(
            loaded, messages, params, on_text=lambda _t: marks.append(time.perf_counter())
        )
        n = outcome.completion_tokens
        first_ms = (marks[0] - started) * 1000
        return {"tokens": n, "prompt_tokens": outcome.prompt_tokens,
                "tok_s": n / (marks[-1] - started), "first_ms": first_ms}  # fmt: skip

    return run


def through_api(http: httpx.Client, tokens: int) -> Run:
    """One generation as a job, followed as SSE (wall clock: the worker's `started_at`
    and this client share the machine's clock)."""
    body = {"task": TASK, "language": "python", "max_new_tokens": tokens, "temperature": 0,
            "use_memory": False, "use_tools": False, "stream": True}  # fmt: skip
    submitted = time.time()
    first_at = last_at = 0.0
    done: dict[str, Any] = {}
    with http.stream("POST", "/generate_code", json=body) as response:
        job_id = response.headers["x-job-id"]
        for event in parse_sse(response.iter_lines()):
            if event.event == "token":
                last_at = time.time()
                first_at = first_at or last_at
            elif event.event == "done":
                done = event.data
    assert first_at and last_at, "no tokens streamed"
    started = datetime.fromisoformat(http.get(f"/jobs/{job_id}").json()["started_at"])
    began = started.timestamp()
    n = done["usage"]["completion_tokens"]
    return {"tokens": n, "prompt_tokens": done["usage"]["prompt_tokens"],
            "tok_s": n / (last_at - began), "first_ms": (first_at - began) * 1000,
            "submit_to_first_ms": (first_at - submitted) * 1000}  # fmt: skip


def compare(name: str, model_id: str, tokens: int, runs: int) -> dict[str, Any]:
    """Alternates in-process and API runs (after one warm-up each), so a machine that gets
    busier or quieter mid-benchmark weighs on both sides alike."""
    data_dir = Path(os.environ.get("CODELOOP_DATA_DIR", "./data")).resolve()
    local_run = in_process_runner(model_id, tokens, data_dir)
    local: list[Run] = []
    remote: list[Run] = []
    env = {"CODELOOP_DATA_DIR": str(data_dir)}
    with stack(model_id, [("generate", 1)], extra_env=env) as s:
        assert s.api is not None
        with httpx.Client(base_url=s.api.url, timeout=300) as http:
            local_run(), through_api(http, tokens)
            for _ in range(runs):
                time.sleep(SETTLE_S)
                local.append(local_run())
                remote.append(through_api(http, tokens))
    for key in ("tokens", "prompt_tokens"):
        mine, theirs = [r[key] for r in local], [r[key] for r in remote]
        if mine != theirs:
            print(f"  warning: {key} differ: {mine} in-process vs {theirs} through the API")
    in_rate = statistics.median(r["tok_s"] for r in local)
    api_rate = statistics.median(r["tok_s"] for r in remote)
    local_first = percentile([r["first_ms"] for r in local], 50)
    remote_first = percentile([r["first_ms"] for r in remote], 50)
    figures = {
        "model": name,
        "tokens": local[0]["tokens"],
        "runs": runs,
        "in_process_tok_s": round(in_rate, 1),
        "api_sse_tok_s": round(api_rate, 1),
        "ratio": round(api_rate / in_rate, 3),
        "in_process_first_token_ms_p50": round(local_first, 1),
        "api_first_token_ms_p50": round(remote_first, 1),
        "added_first_token_ms_p50": round(remote_first - local_first, 1),
        "submit_to_first_token_ms_p50": round(
            percentile([r["submit_to_first_ms"] for r in remote], 50), 1
        ),
    }
    print(
        f"{name:8} {figures['tokens']} tokens: in-process {in_rate:7.1f} tok/s, "
        f"API+Redis+SSE {api_rate:7.1f} tok/s, ratio {figures['ratio']:.3f}; "
        f"first token +{remote_first - local_first:.1f} ms (p50)"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tiny-tokens", type=int, default=400)
    parser.add_argument("--bundled-tokens", type=int, default=96)
    parser.add_argument("--skip-bundled", action="store_true")
    args = parser.parse_args()
    tiny = build_test_model(Path(tempfile.mkdtemp(prefix="tiny-")))
    results = [compare("tiny", str(tiny), args.tiny_tokens, args.runs)]
    if not args.skip_bundled:
        results.append(compare("bundled", "bundled", args.bundled_tokens, args.runs))
    print(json.dumps({"bench": "stream_overhead", "results": results}))


if __name__ == "__main__":
    main()
