"""GPU batching figures on deepseek-coder-6.7b-instruct's architecture, random weights.

No real weights reach the GPU machines, but decode speed does not depend on the
weights' values: the model is built from `bench/configs/deepseek-coder-6.7b-instruct.json`
(the published config, in transformers 5's field names: `rope_parameters`, `dtype`)
with random bf16 weights made directly on the device, the tiny test tokenizer (ids it
does not know decode to nothing, which the engines handle), and no EOS, so every
request decodes exactly `--tokens` tokens. Figures, then one JSON line:

1. `bandwidth_bound_tok_s`: batch-1 decode reads every weight once per token, so it
   cannot beat weight bytes / `--bandwidth-gbs` (H200: 4800 GB/s).
2. `batch1_decode_tok_s`: a bare greedy decode loop (`DynamicCache`, no engine) and
   its fraction of that bound.
3. For each batcher in `--batchers` (`paged`: `workers.llm.paged`; `step`:
   `workers.llm.batching`), through `BatchedEngine` as the worker runs it (one engine,
   `GENERATE_MAX_BATCH` = the largest level): at each concurrency in `--levels`
   (1, 8, 32) that many threads call `generate` at once, greedy: aggregate tokens/s,
   p50 time to first token, p50 per-request decode tokens/s. The largest level is also
   run with the service's default sampling (temperature 0.7, top_p 0.9, repetition
   penalty 1.1) to show what per-request sampling costs.
4. `reference`: published vLLM figures for ~7-8B models on comparable GPUs, with
   their sources, to read ours against (see each entry's caveat).

`--tiny` swaps in a 2-layer model of the same family on the CPU: a smoke run of this
whole script (its figures mean nothing). `python bench/batching_gpu.py` on a CUDA host.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.batching import TASKS

CONFIG = Path(__file__).resolve().parent / "configs" / "deepseek-coder-6.7b-instruct.json"
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4}  # fmt: skip

# Third-party measurements of vLLM, as published; none is our model on our GPU.
REFERENCE = [
    {
        "source": "https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on",
        "setup": "vLLM 0.23, Llama-3.1-8B-Instruct bf16, 1x A100 40GB, 1024 in / 128 out, "
        "--ignore-eos, concurrency 1..64",
        "figures": "batch-1 decode ~75 tok/s, ~77% of the bandwidth ceiling; "
        "6.6x the batch-1 throughput at concurrency 8",
    },
    {
        "source": "https://research.aimultiple.com/inference-engines",
        "setup": "vLLM (FlashInfer), Llama-3.1-8B-Instruct bf16, 1x H100 80GB, "
        "1000 ShareGPT prompts offline",
        "figures": "12,553 output tok/s (SGLang 16,215, LMDeploy 16,132)",
    },
]
CAVEAT = (
    "Llama-3.1-8B has 8 KV heads (128 KiB of KV cache a token in bf16); deepseek-coder-6.7b "
    "has 32 (512 KiB), so at high concurrency it reads ~4x more cache per token. "
    "H100 SXM: 3.35 TB/s, A100 40GB: 1.56 TB/s, H200: 4.8 TB/s. Compare fractions of the "
    "bandwidth bound and scaling factors, not raw tok/s."
)


def build(config_path: Path, tiny: bool, device: str) -> Any:
    """The architecture with random bf16 weights on `device`, as a `LoadedModel`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tests.support import build_test_model
    from workers.llm import LoadedModel

    config = AutoConfig.from_pretrained(config_path)
    if tiny:
        for key, value in TINY.items():
            setattr(config, key, value)
        config.head_dim = config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    with torch.device(device):  # weights made where they live: no 13 GB host copy
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    model.generation_config.eos_token_id = None  # EOS ignored: every run is --tokens long
    tokenizer = AutoTokenizer.from_pretrained(build_test_model(Path(tempfile.mkdtemp())))
    return LoadedModel(model, tokenizer, "random-weights", device, "bfloat16", [])


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_batch1(loaded: Any, tokens: int) -> float:
    """Greedy decode tokens/s of one sequence, without an engine (the model's own speed)."""
    import torch
    from transformers import DynamicCache

    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": TASKS[0]}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )["input_ids"].to(loaded.device)  # fmt: skip
    rates = []
    with torch.inference_mode():
        for _ in range(2):  # the first run warms kernels and the allocator
            cache = DynamicCache()
            out = loaded.model(input_ids=ids, cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            sync(loaded.device)
            started = time.perf_counter()
            for _ in range(tokens):
                out = loaded.model(input_ids=token, cache=cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
            sync(loaded.device)
            rates.append(tokens / (time.perf_counter() - started))
    return rates[-1]


def level(engine: Any, c: int, params: Any) -> dict[str, Any]:
    """`c` threads calling `engine.generate` at once: aggregate and per-request figures."""
    outcomes: list[Any] = [None] * c
    msgs = [[{"role": "user", "content": TASKS[i % len(TASKS)] + f" (#{i})"}] for i in range(c)]

    def go(i: int) -> None:
        outcomes[i] = engine.generate(
            msgs[i], params, on_text=lambda _: None, should_stop=lambda: False
        )

    started = time.perf_counter()
    threads = [threading.Thread(target=go, args=(i,)) for i in range(c)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    made = sum(o.completion_tokens for o in outcomes)
    decode = [
        (o.completion_tokens - 1) * 1000 / max(o.total_ms - o.first_token_ms, 1e-9)
        for o in outcomes
        if o.first_token_ms is not None and o.completion_tokens > 1
    ]
    return {
        "concurrency": c,
        "tokens": made,
        "tok_s": round(made / wall, 1),
        "ttft_ms_p50": round(statistics.median(o.first_token_ms or 0 for o in outcomes), 1),
        "per_request_decode_tok_s_p50": round(statistics.median(decode), 1) if decode else None,
        "prompt_tokens_mean": round(statistics.mean(o.prompt_tokens for o in outcomes), 1),
    }


def through_engine(loaded: Any, kind: str, levels: list[int], tokens: int) -> dict[str, Any]:
    from workers.agent.batched import BatchedEngine
    from workers.llm import SamplingParams

    cuda = loaded.device.startswith("cuda")
    top = max(levels)
    if kind == "paged":  # the worker's CUDA defaults (workers.tasks.generate.paged_limits)
        engine = BatchedEngine(
            loaded, max_batch=top, cache_tokens=0 if cuda else top * 2048, kind="paged",
            page_size=256 if cuda else 32, max_batch_tokens=8192 if cuda else 512,
        )  # fmt: skip
    else:
        engine = BatchedEngine(loaded, max_batch=top, cache_tokens=top * 4096)
    greedy = SamplingParams(max_new_tokens=tokens, temperature=0, repetition_penalty=1.0)
    default = SamplingParams(max_new_tokens=tokens, temperature=0.7, top_p=0.9, seed=None)
    try:
        level(engine, min(2, top), SamplingParams(max_new_tokens=8, temperature=0))  # warm-up
        rows = [level(engine, c, greedy) for c in levels]
        sampled = level(engine, top, default)
    finally:
        engine.close()
    figures: dict[str, Any] = {
        "attn_implementation": loaded.model.config._attn_implementation,
        "levels": rows,
        f"c{top}_default_sampling": sampled,
    }
    for row in rows:
        figures[f"c{row['concurrency']}_tok_s"] = row["tok_s"]
        print(
            f"  {kind} c={row['concurrency']:2}: {row['tok_s']:8.1f} tok/s aggregate, TTFT p50 "
            f"{row['ttft_ms_p50']:.0f} ms, per-request {row['per_request_decode_tok_s_p50']} tok/s"
        )
    print(f"  {kind} c={top} default sampling: {sampled['tok_s']:.1f} tok/s")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU (smoke)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--batchers", default="paged,step")
    parser.add_argument("--bandwidth-gbs", type=float, default=4800.0, help="H200: 4800")
    args = parser.parse_args()
    import torch

    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU host, or pass --tiny for a CPU smoke run")
    loaded = build(args.config, args.tiny, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    bound = args.bandwidth_gbs * 1e9 / weight_bytes
    out: dict[str, Any] = {
        "bench": "batching_gpu",
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "config": str(args.config.name),
        "params_b": round(sum(p.numel() for p in loaded.model.parameters()) / 1e9, 3),
        "weight_gb": round(weight_bytes / 1e9, 2),
        "bandwidth_gbs": args.bandwidth_gbs,
        "bandwidth_bound_tok_s": round(bound, 1),
        "tokens": args.tokens,
    }
    print(f"weights {out['weight_gb']} GB: batch-1 bound {bound:.1f} tok/s")
    rate = decode_batch1(loaded, args.tokens)
    out["batch1_decode_tok_s"] = round(rate, 1)
    out["batch1_fraction_of_bound"] = round(rate / bound, 3)
    print(f"bare decode loop, batch 1: {rate:.1f} tok/s ({rate / bound:.0%} of the bound)")
    levels = [int(x) for x in args.levels.split(",")]
    for kind in args.batchers.split(","):
        out[kind] = through_engine(loaded, kind, levels, args.tokens)
        if 1 in levels and max(levels) > 1:
            by_c = {row["concurrency"]: row["tok_s"] for row in out[kind]["levels"]}
            out[kind]["scaling_top_vs_1"] = round(by_c[max(levels)] / by_c[1], 2)
    if device.startswith("cuda"):
        out["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
    out["reference"] = REFERENCE
    out["reference_caveat"] = CAVEAT
    print(json.dumps(out))


if __name__ == "__main__":
    main()
