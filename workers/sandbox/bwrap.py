"""The process backend's command line: one exec chain from root to the sandboxed program.

    sh -c 'echo $$ > <each cgroup.procs> && exec prlimit ... -- setpriv --reuid U ... --
           bwrap --unshare-all --seccomp FD ... -- <argv>'

The run joins its cgroups while still root, takes its rlimits, and drops to its slot's
uid *before* bwrap starts: bwrap started as root could still read root's files whatever
uid it maps inside. No preexec_fn (unsafe in a threaded worker) is involved.

bwrap then sees only read-only binds of what a runtime needs - /usr (the runtimes, the
Debian checkstyle jars), the dynamic loader's cache, /etc/alternatives, the JDK's /etc
config, the pinned npm tools - never `/`, the project or the data directory; a sized
tmpfs at /tmp; a fresh /proc and /dev; no network, IPC, UTS or PID sharing; an empty
environment plus ours; and the seccomp filter of seccomp.py. Files (the code, a
synthetic /etc/passwd) go in with `--ro-bind-data` from memfds, so the host never
writes, or later opens, a path the sandbox could write.
"""

from __future__ import annotations

import glob
import os
import shlex
from pathlib import Path

from workers.sandbox.backend import SandboxRun
from workers.sandbox.limits import MIB
from workers.sandbox.runtimes import SANDBOX_ENV, TOOLS_MOUNT


def sandbox_files(run: SandboxRun, uid: int) -> dict[str, bytes]:
    """The run's files plus /etc/passwd and /etc/group naming its uid (getpwuid works)."""
    return {
        **run.files,
        "/etc/passwd": f"sandbox:x:{uid}:{uid}:sandbox:/tmp:/bin/sh\n".encode(),
        "/etc/group": f"sandbox:x:{uid}:\n".encode(),
    }


def memfd(name: str, content: bytes) -> int:
    """A file descriptor holding `content`, to be inherited through pass_fds only."""
    fd = os.memfd_create(name, 0)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def bwrap_argv(
    bwrap: str, run: SandboxRun, tools_dir: Path, seccomp_fd: int, file_fds: dict[str, int]
) -> list[str]:
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    args += ["--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):  # merged /usr: keep the symlink, not a second bind
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    ro_paths = ["/etc/ld.so.cache", "/etc/alternatives"]
    if run.family == "java":
        ro_paths += sorted(glob.glob("/etc/java-*"))
    for path in ro_paths:
        args += ["--ro-bind-try", path, path]
    if run.family == "node" and tools_dir.is_dir():
        args += ["--ro-bind", str(tools_dir), TOOLS_MOUNT]
    for host, inside in run.binds:
        args += ["--ro-bind", host, inside]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(run.limits.tmpfs_mb * MIB), "--perms", "1777", "--tmpfs", "/tmp"]
    for path, fd in file_fds.items():
        args += ["--ro-bind-data", str(fd), path]
    # Everything above is mounted; now the root itself (and /code) turn read-only.
    args += ["--remount-ro", "/", "--chdir", run.cwd]
    for key, value in SANDBOX_ENV.items():
        args += ["--setenv", key, value]
    return [*args, "--seccomp", str(seccomp_fd), "--", *run.argv]


def launch_script(
    tools: dict[str, str], run: SandboxRun, uid: int, procs_files: list[str], bwrap: list[str]
) -> str:
    """The `sh -c` script: join the cgroups, set rlimits, drop to `uid`, exec bwrap."""
    lim = run.limits
    chain = [
        tools["prlimit"],
        f"--cpu={lim.cpu_seconds}:{lim.cpu_seconds}",
        f"--fsize={lim.file_bytes}:{lim.file_bytes}",
        f"--nofile={lim.nofile}:{lim.nofile}",
        # The uid is this run's alone, so this counts exactly the run's processes.
        f"--nproc={lim.pids}:{lim.pids}",
        "--core=0:0",
        "--",
        tools["setpriv"],
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        *bwrap,
    ]
    join = "".join(f"echo $$ > {shlex.quote(p)} && " for p in procs_files)
    # If the host runs short of memory, the kernel kills a sandbox before anything else.
    first_to_go = "echo 1000 > /proc/self/oom_score_adj && "
    return join + first_to_go + "exec " + shlex.join(chain)
