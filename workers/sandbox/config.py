"""The sandbox's view of the settings, in one place.

Fields that `app.core.config.Settings` already has are read from it; the rest are read
from `CODELOOP_*` environment variables with the defaults below until they join
`Settings` (same names, lower-cased, without the prefix). Nothing else in the package
reads the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.config import get_settings

DEFAULT_TOOLS_DIR = "/opt/codeloop/sandbox-tools"

# name -> default, for settings not (yet) on `Settings`.
_EXTRA_DEFAULTS: dict[str, Any] = {
    "sandbox_image_python": "codeloop/sandbox-python:1",
    "sandbox_image_node": "codeloop/sandbox-node:1",
    "sandbox_image_java": "codeloop/sandbox-java:1",
    "sandbox_tools_dir": DEFAULT_TOOLS_DIR,
    "sandbox_cgroup": "codeloop-sandbox",
    "sandbox_uid_base": 1_990_000_000,
    "sandbox_slots": 64,
    "exec_pids_max": 128,
    "exec_cpus": 1.0,
    "exec_tmpfs_mb": 64,
    "exec_nofile": 256,
    "lint_timeout_s": 30.0,
    "lint_memory_mb": 768,
}


@dataclass(frozen=True)
class SandboxConfig:
    executor_backend: str
    exec_timeout_s: float
    exec_timeout_cap_s: float
    exec_memory_mb: int
    exec_memory_cap_mb: int
    exec_output_bytes: int
    # Docker image per runtime family; see workers/sandbox/images/.
    sandbox_image_python: str
    sandbox_image_node: str
    sandbox_image_java: str
    # Where scripts/install-sandbox-deps.sh put the pinned npm tools (bound read-only).
    sandbox_tools_dir: Path
    # cgroup (relative to each hierarchy's root) under which runs get their own cgroup.
    sandbox_cgroup: str
    # The process backend runs slot N as uid/gid sandbox_uid_base + N.
    sandbox_uid_base: int
    sandbox_slots: int
    exec_pids_max: int
    exec_cpus: float
    exec_tmpfs_mb: int
    exec_nofile: int
    lint_timeout_s: float
    lint_memory_mb: int

    @property
    def images(self) -> dict[str, str]:
        return {
            "python": self.sandbox_image_python,
            "node": self.sandbox_image_node,
            "java": self.sandbox_image_java,
        }


def _extra(settings: Any, name: str) -> Any:
    default = _EXTRA_DEFAULTS[name]
    if hasattr(settings, name):
        return getattr(settings, name)
    raw = os.environ.get("CODELOOP_" + name.upper(), "").strip()
    if not raw:
        return default
    return type(default)(raw)


def load_config() -> SandboxConfig:
    """Read the settings now (cheap; callers may cache)."""
    s = get_settings()
    cgroup = str(_extra(s, "sandbox_cgroup")).strip("/")
    if not cgroup or any(part in ("", ".", "..") for part in cgroup.split("/")):
        raise ValueError(f"CODELOOP_SANDBOX_CGROUP must be a relative cgroup path: {cgroup!r}")
    return SandboxConfig(
        executor_backend=s.executor_backend,
        exec_timeout_s=s.exec_timeout_s,
        exec_timeout_cap_s=s.exec_timeout_cap_s,
        exec_memory_mb=s.exec_memory_mb,
        exec_memory_cap_mb=s.exec_memory_cap_mb,
        exec_output_bytes=s.exec_output_bytes,
        sandbox_image_python=_extra(s, "sandbox_image_python"),
        sandbox_image_node=_extra(s, "sandbox_image_node"),
        sandbox_image_java=_extra(s, "sandbox_image_java"),
        sandbox_tools_dir=Path(_extra(s, "sandbox_tools_dir")),
        sandbox_cgroup=cgroup,
        sandbox_uid_base=_extra(s, "sandbox_uid_base"),
        sandbox_slots=_extra(s, "sandbox_slots"),
        exec_pids_max=_extra(s, "exec_pids_max"),
        exec_cpus=_extra(s, "exec_cpus"),
        exec_tmpfs_mb=_extra(s, "exec_tmpfs_mb"),
        exec_nofile=_extra(s, "exec_nofile"),
        lint_timeout_s=_extra(s, "lint_timeout_s"),
        lint_memory_mb=_extra(s, "lint_memory_mb"),
    )
