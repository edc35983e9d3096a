"""Pull the code out of a model's Markdown answer.

Fences follow CommonMark: an opening line of ``` or ~~~ (3 or more) with an optional
info string, closed by a line of the same character at least as long. Content lines
lose the opening fence's indentation (models indent fences inside lists). A final fence
left open because generation was cut off still counts: its code runs to the end.

Blocks tagged with the requested language (or an alias) win; failing that, untagged
blocks; failing that, every block. Several chosen blocks are joined by a blank line.
An answer with no fence at all is returned whole, stripped; one whose fences are all
empty gives "".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workers.llm.languages import language_profile

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*)$")


@dataclass(frozen=True)
class CodeBlock:
    info: str  # first word of the info string, lower-cased ("" when untagged)
    code: str
    closed: bool


def find_code_blocks(text: str) -> list[CodeBlock]:
    """Every fenced block in `text`, in order."""
    blocks: list[CodeBlock] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        if match is None or (match["fence"][0] == "`" and "`" in match["info"]):
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: list[str] = []
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            body.append(_dedent(lines[i], indent))
            i += 1
        closed = i < len(lines)
        info = match["info"].strip().split(maxsplit=1)
        tag = info[0].strip("{}.").lower() if info else ""
        blocks.append(CodeBlock(tag, "\n".join(body).strip("\n").rstrip(), closed))
        i += 1
    return blocks


def extract_code(text: str, language: str) -> str:
    """The code the answer gives for `language` (see the module docstring for the rules)."""
    found = find_code_blocks(text)
    if not found:
        return text.strip()
    blocks = [b for b in found if b.code.strip()]
    if not blocks:  # e.g. cut off right after "```python"
        return ""
    aliases = language_profile(language).aliases
    chosen = [b for b in blocks if b.info in aliases] or [b for b in blocks if not b.info] or blocks
    return "\n\n".join(b.code for b in chosen)


def _dedent(line: str, indent: int) -> str:
    stripped = line.lstrip(" \t")
    removable = min(indent, len(line) - len(stripped))
    return line[removable:]
