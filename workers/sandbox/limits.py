"""Resource limits of one sandboxed run, the same for both backends.

Memory is enforced by a cgroup (memory + swap, so a run cannot page out to escape it),
never by RLIMIT_AS: the JVM and node reserve far more address space than they use and
fail to start under any useful RLIMIT_AS. The runtimes get explicit heap flags instead
(`heap_mb`), since inside bubblewrap they cannot see the cgroup's limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float  # wall clock, from start to kill
    memory_mb: int  # memory + swap of every process of the run together
    output_bytes: int  # stdout + stderr together; the run is killed past it
    pids: int  # processes + threads (cgroup pids.max and RLIMIT_NPROC)
    cpus: float  # CPU bandwidth, in cores
    tmpfs_mb: int  # size of the writable /tmp (charged to memory too)
    nofile: int = 256

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * MIB

    @property
    def cpu_seconds(self) -> int:
        """RLIMIT_CPU: a backstop behind the wall clock (a run may use up to `cpus`)."""
        return max(1, math.ceil(self.timeout_s * max(self.cpus, 1.0))) + 1

    @property
    def file_bytes(self) -> int:
        """RLIMIT_FSIZE: no single file larger than the writable space."""
        return self.tmpfs_mb * MIB

    def heap_mb(self, share: float) -> int:
        """Heap for a managed runtime: `share` of the memory limit, at least 16 MiB."""
        return max(16, int(self.memory_mb * share))
