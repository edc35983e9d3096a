"""The process backend: bubblewrap as a per-run unprivileged uid, for hosts without Docker.

A run leases a slot (slots.py: its own uid and cgroups), gets fresh cgroups with its
limits (cgroups.py), is started through the exec chain of bwrap.py and watched by
supervise.py; whatever happens, its cgroups are killed and removed before the slot is
released. `status()` checks everything the chain needs and starts one real sandbox,
and reports what is missing rather than ever running code without the sandbox.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from typing import Any

from workers.sandbox.backend import SandboxBackend, SandboxRun
from workers.sandbox.bwrap import bwrap_argv, launch_script, memfd, sandbox_files
from workers.sandbox.cgroups import CgroupLayout, RunCgroup, detect_layout
from workers.sandbox.config import SandboxConfig
from workers.sandbox.limits import SandboxLimits
from workers.sandbox.result import RunOutcome
from workers.sandbox.seccomp import filter_bpf
from workers.sandbox.slots import NoFreeSlot, idle_slots, lease
from workers.sandbox.supervise import supervise

log = logging.getLogger(__name__)

HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("sh", "prlimit", "setpriv", "bwrap")
# What each runtime family needs, where the sandbox can see it (only /usr is bound);
# javac stands for the JDK: Java's source launcher needs the compiler module.
FAMILY_BINARIES = {
    "python": ("/usr/bin/python3",),
    "node": ("/usr/bin/node",),
    "java": ("/usr/bin/java", "/usr/bin/javac"),
}


class ProcessBackend(SandboxBackend):
    name = "process"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        super().__init__()
        self._layout = CgroupLayout()
        self._tools: dict[str, str] = {}

    # -- status ------------------------------------------------------------------

    def _probe(self) -> dict[str, Any]:
        missing: list[str] = []
        if os.geteuid() != 0:
            missing.append("must run as root (to give each run its own uid, and cgroups)")
        for tool in TOOLS:
            path = shutil.which(tool, path=HOST_PATH)
            if path:
                self._tools[tool] = path
            else:
                package = {"bwrap": "bubblewrap", "sh": "dash"}.get(tool, "util-linux")
                missing.append(f"{tool} not found (apt-get install {package})")
        try:
            filter_bpf()
        except Exception as exc:  # ImportError, OSError from libseccomp ...
            missing.append(f"seccomp unavailable (pip install pyseccomp; libseccomp2): {exc}")
        if not missing:
            self._layout = detect_layout(self.config.sandbox_cgroup)
            missing.extend(self._layout.missing)
        if not missing:
            self._sweep()
            problem = self._smoke_test()
            if problem:
                missing.append(problem)
        languages = self._families()
        status = {
            "available": not missing,
            "missing": missing,
            "cgroup": self._layout.version,
            "cgroup_kill": self._layout.kill_base is not None,
            "runtimes": languages,
        }
        if missing:
            log.warning("process sandbox unavailable: %s", "; ".join(missing))
        return status

    def _complete(self, status: dict[str, Any]) -> bool:
        return bool(status["available"]) and not any(status["runtimes"].values())

    def _families(self) -> dict[str, str | None]:
        """{family: None if ready, else what is missing}."""
        out: dict[str, str | None] = {}
        for family, binaries in FAMILY_BINARIES.items():
            absent = [b for b in binaries if not os.access(b, os.X_OK)]
            out[family] = f"{', '.join(absent)} not found" if absent else None
        esbuild = self.config.sandbox_tools_dir / "bin" / "esbuild"
        ready = os.access(esbuild, os.X_OK)
        out["esbuild"] = None if ready else f"{esbuild} not found (scripts/install-sandbox-deps.sh)"
        return out

    def _sweep(self) -> None:
        """Kill and remove run cgroups that crashed workers left behind."""
        for index in idle_slots(self.config.sandbox_cgroup, self.config.sandbox_slots):
            self._layout.run_cgroup(index).destroy()

    def _smoke_test(self) -> str | None:
        """Start one real sandbox: catches user namespaces being disabled (sysctl,
        AppArmor on Ubuntu 24.04) and the like, which no file check reveals."""
        limits = SandboxLimits(
            timeout_s=10, memory_mb=64, output_bytes=65536, pids=16, cpus=1, tmpfs_mb=1
        )
        outcome = self._run(SandboxRun("python", ["/bin/sh", "-c", "echo ok"], {}, b"", limits))
        if outcome.exit_code == 0 and outcome.stdout == b"ok\n":
            return None
        detail = (outcome.error or outcome.stderr.decode("utf-8", "replace")).strip()
        return f"bubblewrap smoke test failed (exit {outcome.exit_code}): {detail[:500]}"

    # -- running -----------------------------------------------------------------

    def run(self, run: SandboxRun, *, cancel: threading.Event | None = None) -> RunOutcome:
        status = self.status()
        if not status["available"]:
            return RunOutcome(error="process sandbox unavailable: " + "; ".join(status["missing"]))
        return self._run(run, cancel)

    def _run(self, run: SandboxRun, cancel: threading.Event | None = None) -> RunOutcome:
        try:
            config = self.config
            with lease(
                config.sandbox_cgroup, config.sandbox_slots, config.sandbox_uid_base
            ) as slot:
                cgroup = self._layout.run_cgroup(slot.index)
                try:
                    cgroup.create(run.limits)
                    return self._spawn(run, slot.uid, cgroup, cancel)
                finally:
                    cgroup.destroy()
        except NoFreeSlot as exc:
            return RunOutcome(error=str(exc))
        except OSError as exc:
            log.exception("process sandbox failed")
            return RunOutcome(error=f"process sandbox failed: {exc}")

    def _spawn(
        self, run: SandboxRun, uid: int, cgroup: RunCgroup, cancel: threading.Event | None
    ) -> RunOutcome:
        fds: list[int] = []
        try:
            seccomp_fd = memfd("seccomp", filter_bpf())
            fds.append(seccomp_fd)
            file_fds = {}
            for path, content in sandbox_files(run, uid).items():
                file_fds[path] = memfd("file", content)
                fds.append(file_fds[path])
            tools_dir = self.config.sandbox_tools_dir
            bwrap = bwrap_argv(self._tools["bwrap"], run, tools_dir, seccomp_fd, file_fds)
            script = launch_script(self._tools, run, uid, cgroup.procs_files, bwrap)
            started = time.monotonic()
            proc = subprocess.Popen(
                [self._tools["sh"], "-c", script],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=fds,
                env={"PATH": HOST_PATH},
                cwd="/",
                start_new_session=True,  # a signal to the worker's group is not the run's
            )
        finally:
            for fd in fds:
                os.close(fd)
        return supervise(proc, run, started, cancel, cgroup)
