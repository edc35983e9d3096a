"""The contract the execute task calls: backend choice, limits within caps, cancellation,
and clear reports when a sandbox is unusable (never a run without one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from app.core.config import reset_settings_cache
from tests.workers.sandbox.support import run
from workers.sandbox import service
from workers.sandbox.config import load_config

RESULT_KEYS = {"status", "exit_code", "signal", "stdout", "stderr", "truncated",
               "duration_ms", "backend", "lint"}  # fmt: skip


@pytest.fixture
def fresh_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Lets a test change the sandbox's environment; everything is re-read after."""
    yield monkeypatch
    monkeypatch.undo()
    reset_settings_cache()
    service.reset()


def test_result_has_spec_shape(backend: str):
    result = run("python", "print('x')")
    assert set(result) == RESULT_KEYS
    assert result["backend"] == backend


def test_cancel_kills_the_run_promptly(backend: str):
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    started = time.monotonic()
    result = service.execute(
        {"language": "python", "code": "while True:\n    pass", "stdin": None,
         "timeout_s": 20, "memory_mb": 128, "lint": True},
        cancel=cancel,
    )  # fmt: skip
    assert time.monotonic() - started < 3
    assert result["status"] == "internal_error"
    assert result["stderr"].endswith("[sandbox] run cancelled\n")
    assert result["lint"] is None  # nothing more is started once cancelled


def test_limits_are_clamped_to_the_caps():
    config = load_config()
    asked = {"timeout_s": 10_000, "memory_mb": 1 << 30}
    limits = service.limits_for(asked, config)
    assert limits.timeout_s == config.exec_timeout_cap_s
    assert limits.memory_mb == config.exec_memory_cap_mb
    defaults = service.limits_for({"timeout_s": None, "memory_mb": None}, config)
    assert (defaults.timeout_s, defaults.memory_mb) == (
        config.exec_timeout_s,
        config.exec_memory_mb,
    )
    assert defaults.output_bytes == config.exec_output_bytes


def test_memory_limit_is_the_requested_one(backend: str):
    grow = "chunks = []\nfor _ in range(24):\n    chunks.append(bytearray(8 << 20))\nprint('ok')"
    assert run("python", grow, memory_mb=384)["status"] == "ok"  # 192 MiB
    assert run("python", grow, memory_mb=128)["status"] == "memory_limit_exceeded"


def test_unsupported_language(process_backend: str):
    result = run("cobol", "DISPLAY 'HI'.")
    assert result["status"] == "internal_error"
    assert "unsupported language" in result["stderr"]


def test_backend_status_reports_both_backends(process_backend: str):
    status = service.backend_status()
    assert status["selected"] == "process" and status["active"] == "process"
    assert set(status["backends"]) == {"docker", "process"}
    process = status["backends"]["process"]
    assert process["available"] and process["cgroup"] in ("v1", "v2")
    assert set(status["languages"]) == set(service.LANGUAGES)
    assert all(v == {"execute": "ok", "lint": "ok"} for v in status["languages"].values())


def test_missing_tools_are_reported_not_bypassed(process_ready: None, fresh_service):
    fresh_service.setenv("CODELOOP_SANDBOX_TOOLS_DIR", "/nonexistent/codeloop-tools")
    reset_settings_cache()
    service.reset()
    service.select_backend("process")
    result = run("typescript", "console.log(1)")
    assert result["status"] == "internal_error"
    assert "esbuild not found" in result["stderr"] and "install-sandbox-deps" in result["stderr"]
    assert run("python", "print(1)")["status"] == "ok"  # the rest still works
    languages = service.backend_status()["languages"]
    assert "esbuild" in languages["react"]["execute"]


def test_no_engine_means_no_docker_run(process_ready: None, fresh_service):
    fresh_service.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    service.reset()
    service.select_backend("docker")
    result = run("python", "print(1)")
    assert result["status"] == "internal_error"
    assert "no Docker engine answers" in result["stderr"]
    assert service.select_backend("auto").name == "process"
    assert "auto: no Docker engine" in service.backend_status()["reason"]


def test_auto_prefers_docker_when_an_engine_answers(docker_ready: None, fresh_service):
    service.reset()
    assert service.select_backend("auto").name == "docker"
