"""Test helpers: real worker and API processes, an SSE reader, the tiny test model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
ALL_QUEUES = "generate,execute,search,maintenance"


def build_test_model(path: Path) -> Path:
    """The tiny random model of `workers.llm.tiny`, told never to emit EOS.

    A random model stops wherever its EOS happens to win; suppressing it (a plain
    `generation_config.suppress_tokens`, honoured by the production loading path) makes
    every generation run to `max_new_tokens`, so tests control how long a job runs.
    """
    from transformers import GenerationConfig

    from workers.llm.tiny import build_tiny_model

    build_tiny_model(path)
    config = GenerationConfig.from_pretrained(path)
    eos = config.eos_token_id
    config.suppress_tokens = list(eos) if isinstance(eos, list) else [eos]
    config.save_pretrained(path)
    return path


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class ServiceProcess:
    """A real service process with its output in a log file; stopped by `stop`."""

    stop_signal = signal.SIGTERM

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path | None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=_env(env), cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.proc.args!r} exited with {self.proc.returncode}: "
                                 f"{self.log()[-3000:]}")  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[union-attr]


class Worker(ServiceProcess):
    """A real `celery worker` process (prefork pool) on the given queues."""

    def __init__(
        self, env: dict[str, str], queues: str = ALL_QUEUES, concurrency: int = 1,
        log_path: Path | None = None, name: str | None = None,
    ) -> None:  # fmt: skip
        self.name = name or f"w{os.getpid()}-{time.monotonic_ns()}@%h"
        super().__init__([
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
            "-Q", queues, "-c", str(concurrency), "-n", self.name, "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--pool", "prefork",
        ], env, log_path)  # fmt: skip

    def wait_ready(self, timeout: float = 90.0) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if "ready." in self.log():
                return self
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s: {self.log()[-3000:]}")


class GenerateWorker(Worker):
    """`python -m workers.generate_worker`: the batching generate worker (threads pool)."""

    def __init__(
        self, env: dict[str, str], log_path: Path | None = None, name: str | None = None
    ) -> None:
        self.name = name or f"gen{os.getpid()}-{time.monotonic_ns()}@%h"
        ServiceProcess.__init__(self, [
            sys.executable, "-m", "workers.generate_worker", "-n", self.name,
            "--without-gossip", "--without-mingle",
        ], env, log_path)  # fmt: skip


class Beat(ServiceProcess):
    """A real `celery beat` process (the reconciler's clock)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        super().__init__([
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
            "--schedule", str(workdir / "beat-schedule"), "--loglevel", "INFO",
        ], env, workdir / "beat.log")  # fmt: skip


class ApiServer(ServiceProcess):
    """A real uvicorn process serving `app.main:app` on a free loopback port."""

    stop_signal = signal.SIGINT

    def __init__(self, env: dict[str, str], port: int, log_path: Path | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        super().__init__([
            sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning",
        ], env, log_path)  # fmt: skip

    def wait_ready(self, timeout: float = 30.0) -> ApiServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"API not ready: {self.log()}")


@dataclass
class SseEvent:
    id: int | None
    event: str
    data: Any


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    """Parse SSE text lines into events (comments and pings skipped)."""
    event_id: int | None = None
    event_type = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield SseEvent(event_id, event_type, json.loads("\n".join(data)))
            event_id, event_type, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event_id = int(value)
        elif field == "event":
            event_type = value
        elif field == "data":
            data.append(value)


def read_events(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None,
    stop_after: int | None = None, timeout: float = 60.0,
) -> list[SseEvent]:  # fmt: skip
    """Follow an SSE URL until the server closes it (or `stop_after` events)."""
    events: list[SseEvent] = []
    with client.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in parse_sse(response.iter_lines()):
            events.append(event)
            if stop_after is not None and len(events) >= stop_after:
                break
    return events


def humaneval_program(problem: dict[str, Any], solution: str) -> str:
    """A HumanEval problem's prompt + a solution + its tests, as one runnable program."""
    return (
        problem["prompt"] + solution + "\n\n" + problem["test"]
        + f"\n\ncheck({problem['entry_point']})\n"
    )  # fmt: skip


def missing_tool(message: str) -> None:
    """Skip for a tool this machine lacks; in CI (`CI` set) the same thing is a failure."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must have it: scripts/test installs it)")
    pytest.skip(message)
