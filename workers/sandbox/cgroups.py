"""Per-run cgroups for the process backend, on cgroup v1 and v2.

Each run gets `<root>/<sandbox_cgroup>/slot-N` in every hierarchy it needs: memory
(with swap: memsw on v1, `memory.swap.max` on v2), pids and cpu. The run's first
process joins them before it drops privileges, so everything the run ever starts stays
inside, whatever it forks or daemonises, and the run is killed as a whole:
`cgroup.kill` where the kernel has it (v2, or a v1 host with the empty v2 hierarchy
mounted at /sys/fs/cgroup/unified, as this project's CI machine has), otherwise a
SIGKILL sweep of `cgroup.procs` until it is empty (the pids limit bounds the sweep).

A slot's cgroup is owned by whoever holds the slot's lease (see slots.py), so a
cgroup left behind by a crashed worker is killed and removed the next time its slot
is leased, or by `sweep()` when a backend starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from workers.sandbox.limits import SandboxLimits

V1_CONTROLLERS = ("memory", "pids", "cpu")


@dataclass
class CgroupLayout:
    """Where run cgroups go on this host, and what is missing for them."""

    version: str | None = None  # "v1" | "v2" | None
    bases: list[Path] = field(default_factory=list)  # v1: one per controller; v2: one
    kill_base: Path | None = None  # hierarchy with cgroup.kill, if any
    swap_limited: bool = False
    missing: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.version is not None and not self.missing

    def run_cgroup(self, slot: int) -> RunCgroup:
        name = f"slot-{slot}"
        kill_dir = self.kill_base / name if self.kill_base else None
        return RunCgroup(self.version or "", [b / name for b in self.bases], kill_dir)


@dataclass
class RunCgroup:
    version: str
    dirs: list[Path]
    kill_dir: Path | None

    @property
    def all_dirs(self) -> list[Path]:
        extra = [self.kill_dir] if self.kill_dir and self.kill_dir not in self.dirs else []
        return self.dirs + extra

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.all_dirs]

    def create(self, limits: SandboxLimits) -> None:
        self.destroy()  # a stale one from a crashed run in this slot
        for d in self.all_dirs:
            d.mkdir()
        period = 100_000
        quota = max(1000, int(limits.cpus * period))
        if self.version == "v2":
            (cg,) = self.dirs
            _write(cg / "memory.max", limits.memory_bytes)
            _write(cg / "memory.swap.max", 0, optional=True)
            _write(cg / "memory.oom.group", 1, optional=True)
            _write(cg / "pids.max", limits.pids)
            _write(cg / "cpu.max", f"{quota} {period}")
            return
        for d in self.dirs:  # one hierarchy may carry several controllers
            if (d / "memory.limit_in_bytes").exists():
                _write(d / "memory.limit_in_bytes", limits.memory_bytes)
                _write(d / "memory.memsw.limit_in_bytes", limits.memory_bytes, optional=True)
            if (d / "pids.max").exists():
                _write(d / "pids.max", limits.pids)
            if (d / "cpu.cfs_quota_us").exists():
                _write(d / "cpu.cfs_period_us", period)
                _write(d / "cpu.cfs_quota_us", quota)

    def oom_kills(self) -> int:
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError):
                    for line in (d / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
        return 0

    def kill(self, grace_s: float = 2.0) -> None:
        """SIGKILL every process of the run, and wait until none is left."""
        if self.kill_dir is not None:
            with contextlib.suppress(OSError):
                _write(self.kill_dir / "cgroup.kill", 1)
        deadline = time.monotonic() + grace_s
        while True:
            pids = self._pids()
            if not pids or time.monotonic() > deadline:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def destroy(self) -> None:
        """Kill what is left and remove the cgroups (missing ones are fine)."""
        if not any(d.exists() for d in self.all_dirs):
            return
        self.kill()
        for d in self.all_dirs:
            for _ in range(200):  # a killed process leaves its cgroup when reaped
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self.all_dirs:
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return pids


def _write(path: Path, value: object, *, optional: bool = False) -> None:
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except FileNotFoundError:
        if not optional:
            raise


def _cgroup_mounts() -> tuple[Path | None, dict[str, Path]]:
    """(the cgroup2 mount, {v1 controller: mount}) from /proc/self/mountinfo."""
    v2: Path | None = None
    v1: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fstype, _, superopts = [*post.split(), "", "", ""][:3]
            mount_point = Path(pre.split()[4])
            if fstype == "cgroup2" and v2 is None:
                v2 = mount_point
            elif fstype == "cgroup":
                for opt in superopts.split(","):
                    if opt in V1_CONTROLLERS:
                        v1.setdefault(opt, mount_point)
    return v2, v1


def detect_layout(
    sandbox_cgroup: str, mounts: tuple[Path | None, dict[str, Path]] | None = None
) -> CgroupLayout:
    """Find (and create) the parent cgroups; never raises, reports what is missing.

    `mounts` (the cgroup2 mount, {v1 controller: mount}) defaults to this process's."""
    layout = CgroupLayout()
    try:
        v2, v1 = mounts if mounts is not None else _cgroup_mounts()
    except OSError as exc:
        layout.missing.append(f"cannot read /proc/self/mountinfo: {exc}")
        return layout
    controllers_v2 = _read(v2 / "cgroup.controllers").split() if v2 else []
    try:
        if all(c in v1 for c in V1_CONTROLLERS):
            layout.version = "v1"
            # dict.fromkeys: co-mounted controllers (say "cpu,pids") share a directory.
            layout.bases = list(dict.fromkeys(v1[c] / sandbox_cgroup for c in V1_CONTROLLERS))
            for base in layout.bases:
                base.mkdir(parents=True, exist_ok=True)
            memory_base = v1["memory"] / sandbox_cgroup
            layout.swap_limited = (memory_base / "memory.memsw.limit_in_bytes").exists()
            if v2 is not None:  # hybrid: the v2 hierarchy only for cgroup.kill
                kill_base = v2 / sandbox_cgroup
                kill_base.mkdir(parents=True, exist_ok=True)
                layout.kill_base = kill_base if (kill_base / "cgroup.kill").exists() else None
        elif v2 is not None and all(c in controllers_v2 for c in V1_CONTROLLERS):
            layout.version = "v2"
            base = v2 / sandbox_cgroup
            base.mkdir(parents=True, exist_ok=True)
            # Each level must hand the controllers down; this fails (EBUSY) where a
            # level has processes of its own, e.g. the root of a container's cgroup
            # namespace: then point CODELOOP_SANDBOX_CGROUP at a delegated cgroup.
            for level in [*reversed(base.relative_to(v2).parents), base.relative_to(v2)]:
                _enable_controllers(v2 / level)
            layout.bases = [base]
            layout.kill_base = base if (base / "cgroup.kill").exists() else None
            layout.swap_limited = (base / "memory.swap.max").exists() or not _has_swap()
        else:
            have = sorted(v1) if v1 else controllers_v2
            layout.missing.append(
                "cgroups: need memory, pids and cpu controllers (v1 or v2), found "
                + (", ".join(have) or "none")
            )
    except OSError as exc:
        layout.version = None
        layout.missing.append(f"cgroups: cannot set up {sandbox_cgroup!r}: {exc}")
    if layout.version and not layout.swap_limited and _has_swap():
        layout.missing.append("cgroups: swap accounting is off (memsw / memory.swap.max)")
    return layout


def _enable_controllers(cg: Path) -> None:
    wanted = [c for c in V1_CONTROLLERS if c not in _read(cg / "cgroup.subtree_control").split()]
    if wanted:
        _write(cg / "cgroup.subtree_control", " ".join("+" + c for c in wanted))


def _has_swap() -> bool:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("SwapTotal:"):
                return int(line.split()[1]) > 0
    return False


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
