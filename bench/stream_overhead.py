"""What streaming through the service costs: in-process `generate` vs API + Redis + SSE.

Same model, prompt, greedy decoding and token count on both sides, measured in one run:
(a) `generate_stream` in this process; (b) the same generation as a job, followed as SSE
by a client, timed from the job's `status: running` event to the last token at the
client. Reports tokens/s of both and their ratio, and the first-token delay each path
adds (p50 over the runs). Usage:

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
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._stack import percentile, stack
from tests.support import build_test_model, parse_sse

TASK = "Write a Python function that parses a CSV line with quoted fields."


def in_process(model_id: str, tokens: int, runs: int, data_dir: Path) -> dict[str, Any]:
    import torch

    from workers.llm import SamplingParams, code_messages, generate_stream, load_model_with_gpu

    torch.set_num_threads(1)
    loaded = load_model_with_gpu(model_id, device="cpu", data_dir=data_dir)
    messages = code_messages(TASK, "python")
    params = SamplingParams(max_new_tokens=tokens, temperature=0)
    rates, firsts, counts = [], [], []
    for _ in range(runs + 1):  # the first run warms up and is dropped
        marks: list[float] = []
        started = time.perf_counter()
        outcome = generate_stream(
            loaded, messages, params, on_text=lambda _t, m=marks: m.append(time.perf_counter())
        )
        counts.append(outcome.completion_tokens)
        rates.append(outcome.completion_tokens / (marks[-1] - started))
        firsts.append((marks[0] - started) * 1000)
    return {"tokens": counts[1:], "tok_s": rates[1:], "first_ms": firsts[1:]}


def through_api(url: str, tokens: int, runs: int) -> dict[str, Any]:
    rates, firsts, counts, submit_firsts = [], [], [], []
    body = {"task": TASK, "language": "python", "max_new_tokens": tokens, "temperature": 0,
            "stream": True}  # fmt: skip
    with httpx.Client(base_url=url, timeout=300) as http:
        for _ in range(runs + 1):
            submitted = time.perf_counter()
            running_at = first_at = last_at = None
            done: dict[str, Any] = {}
            with http.stream("POST", "/generate_code", json=body) as response:
                for event in parse_sse(response.iter_lines()):
                    now = time.perf_counter()
                    if event.event == "status" and event.data.get("status") == "running":
                        running_at = now
                    elif event.event == "token":
                        first_at = first_at or now
                        last_at = now
                    elif event.event == "done":
                        done = event.data
            assert running_at and first_at and last_at, "no tokens streamed"
            n = done["usage"]["completion_tokens"]
            counts.append(n)
            rates.append(n / (last_at - running_at))
            firsts.append((first_at - running_at) * 1000)
            submit_firsts.append((first_at - submitted) * 1000)
    return {"tokens": counts[1:], "tok_s": rates[1:], "first_ms": firsts[1:],
            "submit_to_first_ms": submit_firsts[1:]}  # fmt: skip


def compare(name: str, model_id: str, tokens: int, runs: int) -> dict[str, Any]:
    data_dir = Path(os.environ.get("CODELOOP_DATA_DIR", "./data")).resolve()
    local = in_process(model_id, tokens, runs, data_dir)
    with stack(model_id, [("generate", 1)], extra_env={"CODELOOP_DATA_DIR": str(data_dir)}) as s:
        assert s.api is not None
        remote = through_api(s.api.url, tokens, runs)
    if local["tokens"] != remote["tokens"]:
        print(f"  warning: token counts differ: {local['tokens']} vs {remote['tokens']}")
    in_rate = statistics.median(local["tok_s"])
    api_rate = statistics.median(remote["tok_s"])
    added_first = percentile(remote["first_ms"], 50) - percentile(local["first_ms"], 50)
    figures = {
        "model": name,
        "tokens": local["tokens"][0],
        "runs": runs,
        "in_process_tok_s": round(in_rate, 1),
        "api_sse_tok_s": round(api_rate, 1),
        "ratio": round(api_rate / in_rate, 3),
        "in_process_first_token_ms_p50": round(percentile(local["first_ms"], 50), 1),
        "api_first_token_ms_p50": round(percentile(remote["first_ms"], 50), 1),
        "added_first_token_ms_p50": round(added_first, 1),
        "submit_to_first_token_ms_p50": round(percentile(remote["submit_to_first_ms"], 50), 1),
    }
    print(
        f"{name:8} {figures['tokens']} tokens: in-process {in_rate:7.1f} tok/s, "
        f"API+Redis+SSE {api_rate:7.1f} tok/s, ratio {figures['ratio']:.3f}; "
        f"first token +{added_first:.1f} ms (p50)"
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
