"""The sandbox's view of the settings (`app.core.config.Settings`), in one place.

Nothing else in the package reads settings or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.core.config import get_settings


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


def load_config() -> SandboxConfig:
    """Read the settings now (cheap; callers may cache)."""
    s = get_settings()
    cgroup = str(s.sandbox_cgroup).strip("/")
    if not cgroup or any(part in ("", ".", "..") for part in cgroup.split("/")):
        raise ValueError(f"CODELOOP_SANDBOX_CGROUP must be a relative cgroup path: {cgroup!r}")
    return SandboxConfig(
        executor_backend=s.executor_backend,
        exec_timeout_s=s.exec_timeout_s,
        exec_timeout_cap_s=s.exec_timeout_cap_s,
        exec_memory_mb=s.exec_memory_mb,
        exec_memory_cap_mb=s.exec_memory_cap_mb,
        exec_output_bytes=s.exec_output_bytes,
        sandbox_image_python=s.sandbox_image_python,
        sandbox_image_node=s.sandbox_image_node,
        sandbox_image_java=s.sandbox_image_java,
        sandbox_tools_dir=Path(s.sandbox_tools_dir),
        sandbox_cgroup=cgroup,
        sandbox_uid_base=s.sandbox_uid_base,
        sandbox_slots=s.sandbox_slots,
        exec_pids_max=s.exec_pids_max,
        exec_cpus=s.exec_cpus,
        exec_tmpfs_mb=s.exec_tmpfs_mb,
        exec_nofile=s.exec_nofile,
        lint_timeout_s=s.lint_timeout_s,
        lint_memory_mb=s.lint_memory_mb,
    )
