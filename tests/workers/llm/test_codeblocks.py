"""extract_code: picking the code out of chatty, cut-off or unfenced answers."""

from __future__ import annotations

import pytest

from workers.llm import extract_code, find_code_blocks


def test_single_block() -> None:
    text = "Here you go:\n```python\ndef f():\n    return 1\n```\nEnjoy!"
    assert extract_code(text, "python") == "def f():\n    return 1"


def test_prefers_the_requested_language() -> None:
    text = "```bash\npip install x\n```\n```py\nimport x\n```\n```python\nprint(x)\n```"
    assert extract_code(text, "python") == "import x\n\nprint(x)"


@pytest.mark.parametrize(
    ("language", "tag"),
    [("react", "jsx"), ("tailwind", "jsx"), ("nestjs", "ts"), ("vite", "js"), ("javascript", "JS")],
)
def test_aliases(language: str, tag: str) -> None:
    text = f"```text\nnot this\n```\n```{tag}\nconst a = 1;\n```"
    assert extract_code(text, language) == "const a = 1;"


def test_untagged_blocks_beat_other_languages() -> None:
    text = "```bash\nnpm i\n```\n```\nconsole.log(1)\n```"
    assert extract_code(text, "javascript") == "console.log(1)"


def test_falls_back_to_any_block() -> None:
    assert extract_code("```ruby\nputs 1\n```", "python") == "puts 1"


def test_unterminated_final_fence_when_generation_was_cut() -> None:
    text = "```python\ndef f():\n    return 1\n```\nAnd also:\n```python\ndef g():\n    ret"
    assert extract_code(text, "python") == "def f():\n    return 1\n\ndef g():\n    ret"
    assert [b.closed for b in find_code_blocks(text)] == [True, False]


def test_no_fence_returns_the_whole_text_stripped() -> None:
    assert extract_code("\n  x = 1\nprint(x)\n\n", "python") == "x = 1\nprint(x)"


def test_empty_fence_gives_empty_code() -> None:
    assert extract_code("Sure!\n```python\n", "python") == ""


def test_indentation_inside_the_block_is_kept() -> None:
    text = "```python\n\n    x = 1\n\tif x:\n        pass\n```"
    assert extract_code(text, "python") == "    x = 1\n\tif x:\n        pass"


def test_indented_fence_in_a_list_is_dedented() -> None:
    text = "1. Code:\n   ```java\n   class A {\n     int x;\n   }\n   ```"
    assert extract_code(text, "java") == "class A {\n  int x;\n}"


def test_tilde_fences_and_longer_backtick_fences() -> None:
    assert extract_code("~~~python\na = 1\n~~~", "python") == "a = 1"
    text = "````python\nprint('```')\n```\nb = 2\n````"
    assert extract_code(text, "python") == "print('```')\n```\nb = 2"


def test_info_string_with_attributes() -> None:
    assert extract_code('```python title="a.py"\na = 1\n```', "python") == "a = 1"
    assert extract_code("```{python}\na = 1\n```", "python") == "a = 1"


def test_inline_backticks_are_not_fences() -> None:
    text = "Use ```python``` fences.\n```python\nok = True\n```"
    assert extract_code(text, "python") == "ok = True"
