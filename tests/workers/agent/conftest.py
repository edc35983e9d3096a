"""A running codeloop whose generate worker plays a script (`MODEL_ID=scripted:…`):
real API, Redis, SQL, Celery workers and the real sandbox; only the model is scripted,
so every test knows exactly what the "model" writes and where its tags split."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Platform, platform_env, running_platform

CALL = '<function>execute_code</function>{"language": "python", "code": "print(6 * 7)"}'
FIXED = "```python\ndef add(a, b):\n    return a + b\n```"
BROKEN = "```python\ndef add(a, b):\n    return a - b\n```"
REVERSE = "```python\ndef reverse_words(s):\n    return ' '.join(s.split()[::-1])\n```"

SCRIPT = {
    "token_chars": 4,
    "rules": [
        # Every token one character: the tag is split at every position.
        {"match": "compute the answer", "turns": [list("Let me run it. " + CALL), "It is 42."]},
        {
            "match": "bad calls",
            "turns": [
                '<function>execute_code</function>{"language": python}',
                "<function>rm_rf</function>{}",
                '<function>execute_code</function>{"language": "cobol", "code": "x"}',
                "All done.",
            ],
        },
        {
            "match": "call forever",
            "turns": ['<function>get_history</function>{"language": "python"}'],
            "repeat_last": True,
        },
        {
            "match": "sleep in the sandbox",
            "turns": [
                '<function>execute_code</function>{"language": "python", '
                '"code": "import time\\ntime.sleep(30)"}',
                "Gave up.",
            ],
        },
        {
            "match": "print a lot",
            "turns": [
                '<function>execute_code</function>{"language": "python", '
                '"code": "print(\'x\' * 100000)"}',
                "Printed.",
            ],
        },
        {"match": "long answer", "turns": [CALL, "word " * 400]},
        {"match": "add two numbers", "turns": [BROKEN, FIXED]},
        {"match": "never right", "turns": [BROKEN], "repeat_last": True},
        {"match": "reverse the words", "turns": [REVERSE], "repeat_last": True},
        {"match": "client weather", "turns": ['<function>get_weather</function>{"city": "Oslo"}']},
        {"match": "stop early", "turns": ["alpha beta STOP gamma delta"]},
    ],
    "default": ["```python\nprint('hello')\n```"],
}


@pytest.fixture(scope="session")
def agent_platform(
    redis_server: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """API + scripted generate worker + execute worker (Redis database 3)."""
    root = tmp_path_factory.mktemp("agent-platform")
    script = root / "script.json"
    script.write_text(json.dumps(SCRIPT))
    env = platform_env(redis_server, root, tiny_model_dir, 3)
    env.update(
        {
            "CODELOOP_MODEL_ID": f"scripted:{script}",
            "CODELOOP_AGENT_TOOL_TIMEOUT_S": "6",
            "CODELOOP_AGENT_TOOL_OUTPUT_CHARS": "2000",
        }
    )
    workers = [("generate,search", 1, "agen@%h"), ("execute", 2, "aexe@%h")]
    with running_platform(env, root, workers) as running:
        yield running
