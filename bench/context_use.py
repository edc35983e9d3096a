"""Does the model use the context it is given? And what does repetition_penalty do to it?

transformers' `repetition_penalty` penalises every token of `input_ids`, the prompt
included: a reference solution in the context makes its own tokens less likely. This
asks the bundled model (greedy, in process) small tasks with a correct reference
solution in the context, as the agent renders memory, under three settings side by
side: the penalty over prompt and completion (transformers'), over the completion
only (`CompletionRepetitionPenalty`, our default), and no penalty. It reports how many
answers pass the task's tests in the real sandbox and how many copied the reference.

    python -m bench.context_use [--penalty 1.1] [--model bundled] [--max-new-tokens 160]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS: list[tuple[str, str, str]] = [
    ("Write a function reverse_string(s) that returns s reversed.",
     "def reverse_string(s):\n    return s[::-1]\n",
     "assert reverse_string('abc') == 'cba'\nassert reverse_string('') == ''"),
    ("Write a function sum_of_squares(xs) that returns the sum of the squares of xs.",
     "def sum_of_squares(xs):\n    return sum(x * x for x in xs)\n",
     "assert sum_of_squares([1, 2, 3]) == 14\nassert sum_of_squares([]) == 0"),
    ("Write a function count_vowels(s) that counts the vowels in s.",
     "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)\n",
     "assert count_vowels('Hello World') == 3\nassert count_vowels('xyz') == 0"),
    ("Write a function is_palindrome(s) that tells whether s reads the same backwards.",
     "def is_palindrome(s):\n    return s == s[::-1]\n",
     "assert is_palindrome('racecar')\nassert not is_palindrome('ab')"),
    ("Write a function factorial(n) that returns n factorial.",
     "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n"
     "    return result\n",
     "assert factorial(5) == 120\nassert factorial(0) == 1"),
    ("Write a function second_largest(xs) that returns the second largest distinct value.",
     "def second_largest(xs):\n    return sorted(set(xs))[-2]\n",
     "assert second_largest([3, 1, 4, 4]) == 3\nassert second_largest([1, 2]) == 1"),
]  # fmt: skip


def run_tests(code: str, tests: str) -> bool:
    from workers.sandbox import service

    result = service.execute(
        {"language": "python", "code": f"{code}\n\n{tests}\n", "timeout_s": 10, "memory_mb": 256}
    )
    return bool(result["status"] == "ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--penalty", type=float, default=1.1)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()

    from workers.agent.prompts import task_messages
    from workers.llm import SamplingParams, extract_code, generate_text, load_model_with_gpu
    from workers.retrieval.memory import ContextItem, ContextWindow

    data_dir = Path(os.environ.get("CODELOOP_DATA_DIR", tempfile.mkdtemp()))
    loaded = load_model_with_gpu(args.model, device="cpu", data_dir=data_dir)
    settings = {
        "penalty_over_prompt": SamplingParams(
            args.max_new_tokens, 0, 1.0, args.penalty, penalize_prompt=True
        ),
        "penalty_over_completion": SamplingParams(args.max_new_tokens, 0, 1.0, args.penalty),
        "no_penalty": SamplingParams(args.max_new_tokens, 0, 1.0, 1.0),
    }
    figures: dict[str, Any] = {"bench": "context_use", "model": args.model, "tasks": len(TASKS)}
    for name, params in settings.items():
        passed = copied = 0
        for task, reference, tests in TASKS:
            window = ContextWindow(task, "python", 1500)
            window.items.append(ContextItem("knowledge", "ref", task, reference, 1.0, 0))
            messages = task_messages(task, "python", context=window.render(), tools=[])
            code = extract_code(generate_text(loaded, messages, params).text, "python")
            passed += run_tests(code, tests)
            copied += "".join(reference.split()) in "".join(code.split())
        figures[name] = {"passed": passed, "copied_reference": copied}
        print(f"{name}: {passed}/{len(TASKS)} pass, {copied} copied the reference", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
