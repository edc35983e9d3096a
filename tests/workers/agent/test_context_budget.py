"""The context budget is counted with the model's tokenizer and never overflows."""

from __future__ import annotations

from pathlib import Path

from workers.agent.context import context_budget
from workers.agent.engine import TransformersEngine
from workers.agent.prompts import task_messages
from workers.agent.tools import TOOLS
from workers.llm import load_model_with_gpu


def test_budget_leaves_room_for_the_answer_inside_the_window(tiny_model_dir: Path, tmp_path):
    engine = TransformersEngine(
        load_model_with_gpu(str(tiny_model_dir), device="cpu", data_dir=tmp_path)
    )
    tools = [tool.describe() for tool in TOOLS.values()]

    def render(context: str | None) -> list[dict[str, str]]:
        return task_messages("write a parser", "python", context=context, tools=tools)

    window = engine.context_window
    assert window is not None
    assert context_budget(engine, render, 100, 256) == 100  # what was asked, when it fits
    room = context_budget(engine, render, 10**6, 256)
    assert 0 < room < window - engine.prompt_tokens(render(None)) - 256
    assert context_budget(engine, render, 10**6, window) == 0  # never negative
    # A context of exactly that many tokens, rendered, still leaves the answer its room.
    filler = " ".join(["word"] * (room * 2))
    while engine.count_tokens(filler) > room:
        filler = filler[: int(len(filler) * 0.95)]
    assert engine.prompt_tokens(render(filler)) + 256 <= window
