"""Prompt construction for each supported language."""

from __future__ import annotations

import pytest

from workers.llm import LANGUAGES, code_messages

FENCES = {
    "python": "python",
    "javascript": "javascript",
    "typescript": "typescript",
    "java": "java",
    "react": "jsx",
    "tailwind": "jsx",
    "vite": "javascript",
    "nestjs": "typescript",
}


def test_every_seed_language_has_a_profile() -> None:
    assert set(LANGUAGES) == set(FENCES)


@pytest.mark.parametrize(("language", "fence"), sorted(FENCES.items()))
def test_system_prompt_asks_for_one_fenced_block(language: str, fence: str) -> None:
    system, user = code_messages("Reverse a string.", language)
    assert system["role"] == "system" and user["role"] == "user"
    assert f"```{fence} " in system["content"]
    assert "exactly one fenced code block" in system["content"]
    assert user["content"] == "Reverse a string."


def test_stack_specific_hints() -> None:
    assert "Tailwind" in code_messages("x", "tailwind")[0]["content"]
    assert "NestJS" in code_messages("x", "nestjs")[0]["content"]
    assert "Vite" in code_messages("x", "vite")[0]["content"]


def test_context_is_delimited_and_task_comes_last() -> None:
    _, user = code_messages("  Sort a list.  ", "python", context="def helper(): ...\n")
    content = user["content"]
    assert "<context>\ndef helper(): ...\n</context>" in content
    assert content.endswith("Task: Sort a list.")


@pytest.mark.parametrize("context", [None, "", "  \n"])
def test_empty_context_is_left_out(context: str | None) -> None:
    assert "<context>" not in code_messages("t", "python", context)[1]["content"]


def test_unknown_language_still_gets_a_prompt() -> None:
    assert "```rust " in code_messages("t", "Rust")[0]["content"]
