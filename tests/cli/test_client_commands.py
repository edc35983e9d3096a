"""`codeloop generate|exec|feedback|jobs|optimize` as subprocesses against the real API
(auth on), workers and the tiny model."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import SecuredApi, free_port
from tests.support import ROOT, read_events
from tests.test_import_boundaries import imported_after

CODELOOP = str(Path(sys.executable).parent / "codeloop")


def codeloop(
    api: SecuredApi | None, *args: str, key: str | None = None, url: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODELOOP_")}
    env["CODELOOP_API_URL"] = url or (api.url if api else "")
    env["CODELOOP_API_KEY"] = key if key is not None else (api.key if api else "")
    return subprocess.run(
        [CODELOOP, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def job_id_in(stderr: str) -> str:
    match = re.search(r"job ([0-9a-f-]{36})", stderr)
    assert match, stderr
    return match.group(1)


def test_generate_streams_prints_the_code_and_feedback_rates_it(secured_api: SecuredApi):
    done = codeloop(secured_api, "generate", "reverse a string", "--lang", "python",
                    "--max-tokens", "16")  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = job_id_in(done.stderr)
    with secured_api.client() as http:
        job = http.get(f"/jobs/{job_id}").json()
        events = read_events(http, f"/jobs/{job_id}/events")
    assert job["status"] == "succeeded" and job["request"]["language"] == "python"
    code = job["result"]["code"]
    assert done.stdout == (code if code.endswith("\n") or not code else code + "\n")
    streamed = "".join(e.data["text"] for e in events if e.event == "token")
    assert done.stderr.startswith(streamed)  # every token, in order, as it came
    tokens = sum(e.event == "token" for e in events)
    assert f"job {job_id} · succeeded · {tokens} tokens" in done.stderr

    rated = codeloop(secured_api, "feedback", job["result"]["generation_id"], "0.8")
    assert rated.returncode == 0, rated.stderr
    assert "mean score 0.80 over 1 rating" in rated.stdout
    refused = codeloop(secured_api, "feedback", job["result"]["generation_id"], "1.5")
    assert refused.returncode == 2
    assert "422" in refused.stderr and "score" in refused.stderr

    listed = codeloop(secured_api, "jobs", "--kind", "generate", "--json")
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout
    table = codeloop(secured_api, "jobs", "--limit", "5")
    assert table.returncode == 0 and job_id in table.stdout and "succeeded" in table.stdout


def test_a_failed_generation_exits_non_zero(secured_api: SecuredApi):
    # Longer than the tiny model's 4096-token window: the job fails before any token.
    task = " ".join(f"w{i}q" for i in range(3000))
    failed = codeloop(secured_api, "generate", task)
    assert failed.returncode == 1, failed.stderr
    assert "job failed: prompt_too_long" in failed.stderr
    assert re.search(r"job [0-9a-f-]{36} · failed · 0 tokens", failed.stderr)
    assert failed.stdout == ""


def test_ctrl_c_cancels_the_generation(secured_api: SecuredApi):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODELOOP_")}
    env.update(CODELOOP_API_URL=secured_api.url, CODELOOP_API_KEY=secured_api.key)
    proc = subprocess.Popen(
        [CODELOOP, "generate", "anything", "--max-tokens", "4000"], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + 60
    while len(seen) < 20 and time.monotonic() < deadline:  # tokens are arriving
        seen += proc.stderr.read() or b""
        time.sleep(0.05)
    assert len(seen) >= 20, seen
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    os.set_blocking(proc.stderr.fileno(), True)
    stderr = (seen + proc.stderr.read()).decode(errors="replace")
    assert proc.returncode == 130, stderr
    job_id = re.search(r"cancelled job ([0-9a-f-]{36})", stderr)
    assert job_id, stderr
    with secured_api.client() as http:
        job = http.get(f"/jobs/{job_id.group(1)}", params={"wait": 30}).json()
    assert job["status"] == "cancelled"
    assert 0 < job["result"]["usage"]["completion_tokens"] < 4000


def test_exec_runs_a_file_and_passes_its_exit_status(secured_api: SecuredApi, tmp_path: Path):
    ok = tmp_path / "hello.py"
    ok.write_text("import sys\nprint('hi', sys.stdin.read().strip())\n")
    stdin = tmp_path / "in.txt"
    stdin.write_text("there\n")
    ran = codeloop(secured_api, "exec", str(ok), "--stdin", str(stdin))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hi there\n"
    assert "[ok · exit 0" in ran.stderr

    failing = tmp_path / "fails.js"
    failing.write_text("console.error('nope'); process.exit(3);\n")
    failed = codeloop(secured_api, "exec", str(failing))
    assert failed.returncode == 3, failed.stderr
    assert "nope" in failed.stderr and "runtime_error" in failed.stderr

    unknown = tmp_path / "notes.txt"
    unknown.write_text("x")
    refused = codeloop(secured_api, "exec", str(unknown))
    assert refused.returncode == 2 and "--lang" in refused.stderr


def test_errors_say_what_failed(secured_api: SecuredApi):
    no_key = codeloop(secured_api, "jobs", key="")
    assert no_key.returncode == 2
    assert "401" in no_key.stderr and "CODELOOP_API_KEY" in no_key.stderr
    wrong_key = codeloop(secured_api, "generate", "x", key="cl_wrong")
    assert wrong_key.returncode == 2 and "invalid API key" in wrong_key.stderr
    down = codeloop(None, "jobs", url=f"http://127.0.0.1:{free_port()}", key="k")
    assert down.returncode == 3 and "cannot reach" in down.stderr


def test_optimize_without_the_endpoint_says_so(secured_api: SecuredApi):
    # A server (path) with no /optimize/retriever answers 404: the command says why.
    old = codeloop(secured_api, "optimize", url=f"{secured_api.url}/no-such-server")
    assert old.returncode == 2
    assert "has no POST /optimize/retriever" in old.stderr
    # The real API: either it has the tuner (a job id) or it says the same.
    with httpx.Client(base_url=secured_api.url) as http:
        has_route = any(
            path == "/optimize/retriever" for path in http.get("/openapi.json").json()["paths"]
        )
    now = codeloop(secured_api, "optimize")
    if has_route:
        assert now.returncode == 0, now.stderr
        assert re.fullmatch(r"[0-9a-f-]{36}\n", now.stdout)
    else:
        assert now.returncode == 2 and "has no POST /optimize/retriever" in now.stderr


def test_the_client_imports_no_torch():
    found = imported_after("import app.cli", ["torch", "transformers", "fastapi", "httpx"])
    assert found == {"torch": False, "transformers": False, "fastapi": False, "httpx": False}


def test_in_a_terminal_the_status_line_is_live(secured_api: SecuredApi):
    """stderr on a pseudo-terminal: rich redraws the text and the status line in place."""
    import pty

    env = {k: v for k, v in os.environ.items() if not k.startswith("CODELOOP_")}
    env.update(CODELOOP_API_URL=secured_api.url, CODELOOP_API_KEY=secured_api.key,
               COLUMNS="100", TERM="xterm-256color")  # fmt: skip
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [CODELOOP, "generate", "anything", "--max-tokens", "64"], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    stdout = proc.communicate(timeout=60)[0].decode()
    os.close(master)
    assert proc.returncode == 0, drawn[-2000:]
    screen = drawn.decode(errors="replace")
    job_id = job_id_in(screen)
    assert "\x1b[" in screen  # cursor movement / styling: a live display, not a log
    assert screen.count(f"job {job_id} · ") >= 2  # the status line was redrawn as tokens came
    assert f"job {job_id} · succeeded" in screen
    with secured_api.client() as http:
        code = http.get(f"/jobs/{job_id}").json()["result"]["code"]
    assert stdout == (code if code.endswith("\n") or not code else code + "\n")
