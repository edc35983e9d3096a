"""The sandbox's entry points for the execute worker: execute, lint, backend_status.

Requests arrive validated (the API enforces the caps with a 422); the limits are
clamped to the caps here once more so that a request that bypassed the API still cannot
ask for more. The backend is chosen once per process from CODELOOP_EXECUTOR_BACKEND:
`docker`, `process`, or `auto` (Docker if an engine answers, else process), and the
choice is logged once. A backend that is not usable never falls back to running code
unsandboxed: `execute` answers `internal_error` saying what is missing, `lint` raises
`LintError`, and `backend_status()` lists what to install.

Cancellation: setting `cancel` kills the run within ~50 ms; the result then has status
`internal_error` and stderr ends with "[sandbox] run cancelled" (SPEC §8 has no status
for it; the job itself ends `cancelled`).

This module imports neither torch nor fastapi (the execute worker must not).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Any

from workers.sandbox import lint as linters
from workers.sandbox.backend import SandboxBackend, SandboxRun
from workers.sandbox.config import SandboxConfig, load_config
from workers.sandbox.docker_backend import DockerBackend
from workers.sandbox.limits import SandboxLimits
from workers.sandbox.process_backend import ProcessBackend
from workers.sandbox.result import RunOutcome, to_result
from workers.sandbox.runtimes import LANGUAGES, Runtime

__all__ = [
    "LANGUAGES",
    "LintError",
    "backend_status",
    "execute",
    "lint",
    "reset",
    "select_backend",
]

log = logging.getLogger(__name__)
LintError = linters.LintError

_lock = threading.Lock()
_backends: dict[str, SandboxBackend] = {}  # by name: each probes its host only once
_backend: SandboxBackend | None = None
_reason = ""


def _instance(name: str, config: SandboxConfig) -> SandboxBackend:
    if name not in _backends:
        _backends[name] = DockerBackend(config) if name == "docker" else ProcessBackend(config)
    return _backends[name]


def select_backend(choice: str | None = None) -> SandboxBackend:
    """The backend this process uses: chosen on first use from the settings; `choice`
    ("auto", "docker", "process") chooses again (tests, `codeloop` tooling)."""
    global _backend, _reason
    with _lock:
        if _backend is not None and choice is None:
            return _backend
        config = load_config()
        choice = choice or config.executor_backend
        if choice in ("docker", "process"):
            _backend, _reason = _instance(choice, config), f"executor_backend={choice}"
        else:
            docker = _instance("docker", config)
            if docker.available():
                _backend, _reason = docker, f"auto: Docker {docker.status()['engine']} answers"
            else:
                _backend = _instance("process", config)
                _reason = "auto: no Docker engine (" + "; ".join(docker.status()["missing"]) + ")"
        log.info("sandbox backend: %s (%s)", _backend.name, _reason)
        return _backend


def reset() -> None:
    """Forget the chosen backend and what the backends found (tests change the env)."""
    global _backend
    with _lock:
        _backends.clear()
        _backend = None


def execute(request: dict[str, Any], *, cancel: threading.Event | None = None) -> dict[str, Any]:
    """Run `request["code"]` in the sandbox; SPEC §8's execute result."""
    config = load_config()
    runtime = LANGUAGES.get(str(request.get("language")))
    backend = select_backend()
    if runtime is None:
        return _failed(f"unsupported language {request.get('language')!r}", backend.name)
    limits = limits_for(request, config)
    marker = "codeloop-compile-failed-" + secrets.token_hex(16)
    missing = _runtime_missing(backend, runtime)
    if missing:
        outcome = RunOutcome(error=missing)
    else:
        run = SandboxRun(
            family=runtime.family,
            argv=runtime.command(limits, marker),
            files={runtime.source_path: _utf8(request["code"])},
            stdin=_utf8(request.get("stdin") or ""),
            limits=limits,
        )
        outcome = backend.run(run, cancel=cancel)
    result = to_result(runtime, outcome, marker, backend.name)
    if request.get("lint") and not (cancel is not None and cancel.is_set()):
        try:
            result["lint"] = lint(request)["issues"]
        except LintError as exc:
            log.warning("lint failed for an execution: %s", exc)
    return result


def lint(request: dict[str, Any]) -> dict[str, Any]:
    """Lint `request["code"]`: `{"issues": [...], "linter": str, "duration_ms": int}`."""
    runtime = LANGUAGES.get(str(request.get("language")))
    if runtime is None:
        raise LintError(f"unsupported language {request.get('language')!r}")
    config = load_config()
    limits = SandboxLimits(
        timeout_s=config.lint_timeout_s,
        memory_mb=config.lint_memory_mb,
        output_bytes=max(config.exec_output_bytes, 4 * 1024 * 1024),
        pids=config.exec_pids_max,
        cpus=max(config.exec_cpus, 1.0),
        tmpfs_mb=16,
        nofile=config.exec_nofile,
    )
    job = linters.build(runtime, str(request["code"]), limits)
    started = time.monotonic()
    outcome = select_backend().run(job.run)
    issues = linters.parse(runtime, outcome)
    return {
        "issues": issues,
        "linter": job.linter,
        "duration_ms": round((time.monotonic() - started) * 1000),
    }


def backend_status() -> dict[str, Any]:
    """Which backend is active, and what each one is missing (for /readyz, operators)."""
    active = select_backend()
    config = load_config()
    with _lock:
        backends = {name: _instance(name, config).status() for name in ("docker", "process")}
    languages = {
        name: {
            "execute": _runtime_missing(active, rt) or "ok",
            "lint": _linter_missing(active, rt, config) or "ok",
        }
        for name, rt in LANGUAGES.items()
    }
    return {
        "requested": config.executor_backend,
        "active": active.name if active.available() else None,
        "selected": active.name,
        "reason": _reason,
        "backends": backends,
        "languages": languages,
    }


def limits_for(request: dict[str, Any], config: SandboxConfig) -> SandboxLimits:
    """The run's limits: the request's, within the caps (clamped again here), or the defaults."""
    timeout = float(request.get("timeout_s") or config.exec_timeout_s)
    memory = int(request.get("memory_mb") or config.exec_memory_mb)
    return SandboxLimits(
        timeout_s=max(0.1, min(timeout, config.exec_timeout_cap_s)),
        memory_mb=max(16, min(memory, config.exec_memory_cap_mb)),
        output_bytes=config.exec_output_bytes,
        pids=config.exec_pids_max,
        cpus=config.exec_cpus,
        tmpfs_mb=config.exec_tmpfs_mb,
        nofile=config.exec_nofile,
    )


def _runtime_missing(backend: SandboxBackend, runtime: Runtime) -> str | None:
    status = backend.status()
    if not status["available"]:
        return f"{backend.name} sandbox unavailable: " + "; ".join(status["missing"])
    if isinstance(backend, DockerBackend):
        return status["images"].get(runtime.family)
    found = status["runtimes"]
    esbuild = found.get("esbuild") if runtime.kind == "esbuild" else None
    return found.get(runtime.family) or esbuild


def _linter_missing(backend: SandboxBackend, runtime: Runtime, config: SandboxConfig) -> str | None:
    missing = _runtime_missing(backend, runtime)
    if missing or isinstance(backend, DockerBackend):
        return missing
    if runtime.linter == "ruff" and not linters.find_ruff():
        return "ruff not found (pip install ruff)"
    tools = config.sandbox_tools_dir
    if runtime.linter == "eslint" and not (tools / "eslint.config.mjs").exists():
        return f"ESLint not installed in {tools} (scripts/install-sandbox-deps.sh)"
    if runtime.linter == "checkstyle" and not os.path.exists(linters.CHECKSTYLE_JARS[-1]):
        return "checkstyle not found (apt-get install checkstyle)"
    return None


def _utf8(text: Any) -> bytes:
    # JSON strings may hold lone surrogates, which UTF-8 cannot encode.
    return str(text).encode("utf-8", "replace")


def _failed(message: str, backend: str) -> dict[str, Any]:
    return to_result(LANGUAGES["python"], RunOutcome(error=message), "", backend)
