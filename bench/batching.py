"""Batched generation: aggregate tokens/s and latencies at 1, 4, 8, 16 concurrent requests.

Two parts, figures printed, then one JSON line:

1. `api` (default on): a private stack whose generate worker is the batching one
   (`python -m workers.generate_worker`, threads pool of 16), once per batcher in
   `--batching` (default `step,paged`: `GENERATE_BATCHING` forced). For each
   concurrency c, the same c requests (distinct tasks, greedy, memory and tools off,
   EOS still honoured) run one after another, then all at once through the API and SSE:
   aggregate tokens/s of each, their ratio, p50 time to first token (submit → first
   token event) and p50 inter-token gap. Sequential and concurrent alternate per c, so
   load drift weighs on both alike.
2. `library` (in process): the engines that could serve a batch on this device, on the
   same 8 prompts: sequential `generate_stream`, our `StepBatcher` and our
   `PagedBatcher` (transformers' `ContinuousBatchingManager` with per-request sampling;
   8 threads calling `BatchedEngine.generate`), and transformers' own `generate_batch`
   (paged cache, no streaming) for reference. Step and paged alternate over `--rounds`.

The GPU figures (deepseek-coder-6.7b's architecture, random bf16 weights) are
`bench/batching_gpu.py`. `python bench/batching.py --model bundled` (default),
`--model tiny` for a quick run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import percentile, stack
from tests.support import GenerateWorker, build_test_model, parse_sse

TASKS = [
    "Write a Python function that reverses a string.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Write a Python function that checks whether a number is prime.",
    "Write a Python function that merges two sorted lists.",
    "Write a Python function that counts the vowels in a string.",
    "Write a Python function that flattens a nested list.",
    "Write a Python function that returns the factorial of n.",
    "Write a Python function that removes duplicates from a list, keeping order.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python function that computes the greatest common divisor of two ints.",
    "Write a Python function that transposes a matrix given as a list of lists.",
    "Write a Python function that parses a CSV line into fields.",
    "Write a Python function that returns the largest element of a list.",
    "Write a Python function that converts Celsius to Fahrenheit.",
    "Write a Python function that counts words in a text.",
    "Write a Python function that sums the digits of an integer.",
]
Run = dict[str, Any]


def one_request(http: httpx.Client, task: str, tokens: int) -> Run:
    body = {"task": task, "language": "python", "max_new_tokens": tokens, "temperature": 0,
            "use_memory": False, "use_tools": False, "stream": True}  # fmt: skip
    submitted = time.perf_counter()
    marks: list[float] = []
    done: dict[str, Any] = {}
    with http.stream("POST", "/generate_code", json=body) as response:
        for event in parse_sse(response.iter_lines()):
            if event.event == "token":
                marks.append(time.perf_counter())
            elif event.event in ("done", "error"):
                done = event.data
                break
    assert marks and "usage" in done, f"no generation: {done}"
    # Events leave the worker in small batches (the pump lingers 10 ms), so single gaps
    # can read 0: the inter-token latency of a request is its mean gap.
    itl = (marks[-1] - marks[0]) * 1000 / max(1, len(marks) - 1)
    return {"tokens": done["usage"]["completion_tokens"], "text": done["text"],
            "ttft_ms": (marks[0] - submitted) * 1000, "itl_ms": itl,
            "start": submitted, "end": marks[-1]}  # fmt: skip


def run_set(http: httpx.Client, tasks: list[str], tokens: int, together: bool) -> dict[str, Any]:
    runs: list[Run] = [{}] * len(tasks)
    started = time.perf_counter()
    if together:

        def go(i: int) -> None:
            runs[i] = one_request(http, tasks[i], tokens)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(tasks))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        runs = [one_request(http, task, tokens) for task in tasks]
    wall = time.perf_counter() - started
    total = sum(r["tokens"] for r in runs)
    return {
        "tokens": total,
        "wall_s": round(wall, 2),
        "tok_s": round(total / wall, 2),
        "ttft_ms_p50": round(percentile([r["ttft_ms"] for r in runs], 50), 1),
        "itl_ms_p50": round(percentile([r["itl_ms"] for r in runs], 50), 2),
        "texts": [r["text"] for r in runs],
    }


def api_part(
    model_id: str, tokens: int, levels: list[int], data_dir: Path, batching: str
) -> list[dict]:
    env = {"CODELOOP_DATA_DIR": str(data_dir), "CODELOOP_GENERATE_MAX_BATCH": str(max(levels)),
           "CODELOOP_GENERATE_BATCHING": batching}  # fmt: skip
    results = []
    with stack(model_id, [], extra_env=env) as s:
        assert s.api is not None
        worker = GenerateWorker(s.env, s.root / "generate.log", name="benchgen@%h")
        try:
            worker.wait_ready(600)
            with httpx.Client(base_url=s.api.url, timeout=600) as http:
                run_set(http, TASKS[:2], 8, together=True)  # warm-up
                for c in levels:
                    tasks = TASKS[:c]
                    seq = run_set(http, tasks, tokens, together=False)
                    con = run_set(http, tasks, tokens, together=True)
                    same = seq.pop("texts") == con.pop("texts")
                    row = {"concurrency": c, "sequential": seq, "concurrent": con,
                           "speedup": round(con["tok_s"] / seq["tok_s"], 2),
                           "greedy_outputs_equal": same}  # fmt: skip
                    results.append(row)
                    print(
                        f"  c={c:2}: sequential {seq['tok_s']:7.1f} tok/s, concurrent "
                        f"{con['tok_s']:7.1f} tok/s (x{row['speedup']}); TTFT p50 "
                        f"{con['ttft_ms_p50']:.0f} ms, inter-token p50 {con['itl_ms_p50']:.1f} ms"
                        f" (sequential {seq['itl_ms_p50']:.1f}); outputs equal: {same}"
                    )
        finally:
            worker.stop()
    base_itl = results[0]["concurrent"]["itl_ms_p50"]
    for row in results:
        row["itl_vs_c1"] = round(row["concurrent"]["itl_ms_p50"] / max(base_itl, 1e-9), 2)
        # The same requests one at a time, just before: batch-1 latency under the same load.
        row["itl_vs_sequential"] = round(
            row["concurrent"]["itl_ms_p50"] / max(row["sequential"]["itl_ms_p50"], 1e-9), 2
        )
    return results


def concurrent_tok_s(engine: Any, msgs: list[Any], params: Any) -> tuple[float, float]:
    """(aggregate tokens/s, p50 time to first token in ms) of one thread per prompt
    calling `engine.generate` at once."""
    outcomes: list[Any] = [None] * len(msgs)

    def go(i: int) -> None:
        outcomes[i] = engine.generate(
            msgs[i], params, on_text=lambda _: None, should_stop=lambda: False
        )

    started = time.perf_counter()
    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(msgs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ttft = statistics.median(o.first_token_ms or 0.0 for o in outcomes)
    return sum(o.completion_tokens for o in outcomes) / wall, ttft


def library_part(model_id: str, tokens: int, n: int, data_dir: Path, rounds: int) -> dict[str, Any]:
    """Sequential vs the step batcher vs the paged batcher (and `generate_batch`), in process."""
    from transformers import GenerationConfig

    from workers.agent.batched import BatchedEngine
    from workers.llm import SamplingParams, code_messages, generate_stream, load_model_with_gpu

    loaded = load_model_with_gpu(model_id, device="cpu", data_dir=data_dir)
    msgs = [code_messages(task, "python") for task in TASKS[:n]]
    params = SamplingParams(max_new_tokens=tokens, temperature=0)
    figures: dict[str, Any] = {"prompts": n, "max_new_tokens": tokens}

    generate_stream(loaded, msgs[0], params, on_text=lambda _: None)  # warm-up
    started = time.perf_counter()
    done = sum(
        generate_stream(loaded, m, params, on_text=lambda _: None).completion_tokens for m in msgs
    )
    figures["sequential_tok_s"] = round(done / (time.perf_counter() - started), 2)

    ids = [
        loaded.tokenizer.apply_chat_template(m, add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        for m in msgs
    ]
    config = GenerationConfig(
        max_new_tokens=tokens, do_sample=False, eos_token_id=loaded.eos_token_ids or None
    )

    def generate_batch(cb: Any) -> float:
        kwargs: dict[str, Any] = {"generation_config": config, "progress_bar": False}
        if cb is not None:
            kwargs["continuous_batching_config"] = cb
        started = time.perf_counter()
        out = loaded.model.generate_batch(ids, **kwargs)
        made = sum(len(o.generated_tokens) for o in out.values())
        return made / (time.perf_counter() - started)

    engines = {
        "step_batcher": BatchedEngine(loaded, max_batch=n, cache_tokens=n * 4096),
        "paged_batcher": BatchedEngine(
            loaded, max_batch=n, cache_tokens=n * 2048, kind="paged",
            page_size=32, max_batch_tokens=512,
        ),
    }  # fmt: skip
    ttfts: dict[str, list[float]] = {name: [] for name in engines}

    def batched(name: str) -> float:
        rate, ttft = concurrent_tok_s(engines[name], msgs, params)
        ttfts[name].append(ttft)
        return rate

    runs: dict[str, Any] = {name: (lambda name=name: batched(name)) for name in engines}
    # transformers' own entry point (a manager built and torn down per call), CPU-sized
    runs["generate_batch_sdpa_tuned"] = lambda: generate_batch(cpu_cb_config(n))
    for engine in engines.values():
        concurrent_tok_s(engine, msgs[:1], params)  # warm-up
    generate_batch(cpu_cb_config(n))
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):  # interleaved, so load drift weighs on all alike
        for name, run in runs.items():
            rates[name].append(run())
    for engine in engines.values():
        engine.close()
    for name, values in rates.items():
        figures[f"{name}_tok_s"] = round(statistics.median(values), 2)
        figures[f"{name}_rounds_tok_s"] = [round(r, 2) for r in values]
    for name, values in ttfts.items():
        figures[f"{name}_ttft_ms_p50"] = round(statistics.median(values), 1)
    for attn, name, cb in [
        ("sdpa", "sdpa_default", None),
        ("paged|eager", "paged_eager_tuned", cpu_cb_config(n)),
    ]:  # measured once, for reference
        loaded.model.set_attn_implementation(attn)
        try:
            figures[f"generate_batch_{name}_tok_s"] = round(generate_batch(cb), 2)
        except Exception as exc:  # report what the library refused, keep measuring
            figures[f"generate_batch_{name}_error"] = f"{type(exc).__name__}: {exc}"[:200]
    loaded.model.set_attn_implementation("sdpa")
    base = figures["sequential_tok_s"]
    for key in list(figures):
        if key.endswith("_tok_s") and key != "sequential_tok_s" and "rounds" not in key:
            figures[key.replace("_tok_s", "_vs_sequential")] = round(figures[key] / base, 2)
    print("  " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    return figures


def cpu_cb_config(n: int) -> Any:
    """transformers' CB sized for a CPU: its defaults size the paged cache from GPU memory
    and measured ~12x slower than these (small pages, a bounded cache, no CUDA graphs)."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    return ContinuousBatchingConfig(
        page_size=32, num_blocks=128, max_batch_tokens=512, max_requests_per_batch=n,
        use_cuda_graph=False, use_async_batching=False, allow_block_sharing=False,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="bundled", help="bundled, tiny, or a model path")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--levels", default="1,4,8,16")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--skip-library", action="store_true")
    parser.add_argument("--batching", default="step,paged", help="batchers for the API part")
    parser.add_argument("--rounds", type=int, default=3, help="library part: alternations")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data_dir = Path(os.environ.get("CODELOOP_DATA_DIR", "./data")).resolve()
    model_id = args.model
    if model_id == "tiny":
        model_id = str(build_test_model(Path(tempfile.mkdtemp(prefix="tiny-"))))
    out: dict[str, Any] = {"bench": "batching", "model": args.model, "tokens": args.tokens,
                           "loadavg_start": os.getloadavg()}  # fmt: skip
    if not args.skip_library:
        import torch

        torch.set_num_threads(1)
        print("in process, 8 prompts:")
        out["library"] = library_part(model_id, args.tokens, 8, data_dir, args.rounds)
    if not args.skip_api:
        levels = [int(x) for x in args.levels.split(",")]
        out["api"] = {}
        for batching in args.batching.split(","):
            print(f"through the API (batching generate worker, GENERATE_BATCHING={batching}):")
            rows = api_part(model_id, args.tokens, levels, data_dir, batching)
            out["api"][batching] = rows
            by_c = {row["concurrency"]: row for row in rows}
            if 8 in by_c:
                out[f"{batching}_speedup_at_8"] = by_c[8]["speedup"]
                out[f"{batching}_itl_p50_at_8_vs_1"] = by_c[8]["itl_vs_c1"]
                out[f"{batching}_itl_p50_at_8_vs_sequential"] = by_c[8]["itl_vs_sequential"]
    out["loadavg_end"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
