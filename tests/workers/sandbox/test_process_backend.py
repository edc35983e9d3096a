"""The process backend's own machinery on this host: a uid per concurrent run, stale
cgroups swept at start, and nothing of a run left in its cgroups afterwards."""

from __future__ import annotations

import dataclasses
import subprocess
from concurrent.futures import ThreadPoolExecutor

from tests.workers.sandbox.support import run
from workers.sandbox.cgroups import detect_layout
from workers.sandbox.config import load_config
from workers.sandbox.limits import SandboxLimits
from workers.sandbox.process_backend import ProcessBackend

LIMITS = SandboxLimits(timeout_s=5, memory_mb=64, output_bytes=4096, pids=8, cpus=1, tmpfs_mb=1)


def test_concurrent_runs_get_their_own_uid(process_backend: str):
    code = "import os, time\nprint(os.getuid(), os.getgid(), os.getgroups())\ntime.sleep(0.5)"
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: run("python", code), range(3)))
    ids = [r["stdout"].split(maxsplit=2) for r in results]
    base = load_config().sandbox_uid_base
    assert len({uid for uid, _, _ in ids}) == 3
    for uid, gid, groups in ids:
        assert uid == gid and int(uid) >= base
        assert groups.strip() == "[]"  # no supplementary groups (setpriv --clear-groups)


def test_stale_cgroups_are_swept_when_a_backend_starts(process_ready: None):
    config = dataclasses.replace(
        load_config(),
        sandbox_cgroup="codeloop-sandbox-sweep-test",
        sandbox_uid_base=load_config().sandbox_uid_base + 100_000,
        sandbox_slots=2,
    )
    layout = detect_layout(config.sandbox_cgroup)
    stale = layout.run_cgroup(1)
    stale.create(LIMITS)
    # A process a crashed worker left in its run's cgroups.
    leftover = subprocess.Popen(["sleep", "600"])
    for procs in stale.procs_files:
        with open(procs, "w") as f:
            f.write(str(leftover.pid))
    try:
        assert ProcessBackend(config).status()["available"]  # starting it sweeps
        assert leftover.wait(timeout=5) == -9
        assert not any(d.exists() for d in stale.all_dirs)
    finally:
        leftover.kill()
        leftover.wait()
        stale.destroy()
        for base in [*layout.bases, layout.kill_base]:
            if base is not None and base.exists():
                base.rmdir()
