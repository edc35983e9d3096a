"""Helpers for the sandbox tests: run a program the way the API would, and look for
anything a run left behind on the host."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from workers.sandbox import service
from workers.sandbox.docker_backend import LABEL, owner_label


def run(language: str, code: str, **request: Any) -> dict[str, Any]:
    """`service.execute` with the defaults the API would fill in."""
    body = {"language": language, "code": code, "stdin": None, "timeout_s": 10.0,
            "memory_mb": 256, "lint": False, **request}  # fmt: skip
    return service.execute(body)


def processes_with(token: str) -> list[int]:
    """Host pids whose command line contains `token` (containers' processes included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_for_no_processes(token: str, timeout: float = 3.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def our_containers() -> list[dict[str, Any]]:
    """Sandbox containers this test process created that still exist."""
    import docker

    api = docker.from_env(timeout=10).api
    try:
        return list(api.containers(all=True, filters={"label": f"{LABEL}={owner_label()}"}))
    finally:
        api.close()


def assert_host_healthy(backend: str) -> None:
    """The host can still fork, nothing of earlier runs is left, and a run works."""
    subprocess.run(["true"], check=True)
    if backend == "docker":
        assert our_containers() == []
    result = run("python", "print(6 * 7)")
    assert (result["status"], result["stdout"]) == ("ok", "42\n"), result
