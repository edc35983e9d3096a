"""`run_in_colab()` outside Colab: detection, why there is no tunnel, a real start of the
stack with auth forced on, and the printed curl commands run as pasted."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess

import httpx
import nbformat
import pytest

from app import colab
from tests.conftest import free_port
from tests.support import ROOT

NOTEBOOK = ROOT / "examples" / "colab.ipynb"


def test_detects_colab_by_its_runtime_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COLAB_RELEASE_TAG", "COLAB_BACKEND_VERSION"):
        monkeypatch.delenv(name, raising=False)
    assert colab.in_colab() is False  # this machine has no google.colab package
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101-060000_RC00")
    assert colab.in_colab() is True


def test_says_why_there_is_no_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert colab.ngrok_token() is None
    reason = colab.no_tunnel_reason(None)
    assert reason and "NGROK_AUTHTOKEN is not set" in reason and "Secrets" in reason
    monkeypatch.setenv("NGROK_AUTHTOKEN", "  2abc_token  ")
    assert colab.ngrok_token() == "2abc_token"
    assert colab.no_tunnel_reason("2abc_token") is None  # pyngrok is installed (dev extra)


def test_curl_commands_quote_the_key() -> None:
    key = "cl_a'b\"c$d"
    commands = colab.curl_commands("https://x.ngrok.app", key)
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "curl"
        assert f"Authorization: Bearer {key}" in words
    assert all("Authorization" not in c for c in colab.curl_commands("http://h", None))


def test_the_notebook_is_valid_and_calls_run_in_colab() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    python = "\n".join(
        line for source in code for line in source.splitlines() if line.lstrip()[:1] not in "!%"
    )
    ast.parse(python)
    assert "run_in_colab(" in python and "NGROK_AUTHTOKEN" in python


@pytest.mark.slow
def test_starts_the_stack_with_auth_forced_and_the_printed_commands_work(
    tmp_path, tiny_model_dir, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("CODELOOP_")] + ["NGROK_AUTHTOKEN"]:
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    stack = colab.run_in_colab(
        port=port, flower_port=free_port(), data_dir=tmp_path / "data", require_key=True,
        wait_ready=True,
        env={"CODELOOP_MODEL_ID": str(tiny_model_dir), "CODELOOP_MODEL_DEVICE": "cpu",
             "CODELOOP_EMBEDDED_REDIS_PORT": str(free_port()),
             "CODELOOP_FLOWER_BASIC_AUTH": "ops:secret"},
    )  # fmt: skip
    try:
        printed = capsys.readouterr().out
        assert "not in Colab" in printed
        assert "no tunnel: NGROK_AUTHTOKEN is not set" in printed
        assert stack.public_url is None and stack.url == f"http://127.0.0.1:{port}"
        assert stack.key and printed.count(f"API key     {stack.key}") == 1
        assert httpx.get(stack.url + "/jobs").status_code == 401  # auth is on
        commands = re.findall(r"^  (curl .*)$", printed, flags=re.MULTILINE)
        assert len(commands) == 4
        submitted = json.loads(_sh(commands[0]))
        assert submitted["kind"] == "generate" and submitted["status"] == "queued"
        streamed = _sh(commands[1])
        assert "event: token" in streamed and "event: done" in streamed
        listed = json.loads(_sh(commands[2]))
        assert submitted["id"] in [job["id"] for job in listed["items"]]
        assert json.loads(_sh(commands[3]))["kind"] == "execute"
    finally:
        stack.stop()
    assert stack.process.returncode == 0, stack.log_path.read_text()[-3000:]


def _sh(command: str) -> str:
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout
