"""Slots: which uid and which cgroup a process-backend run may use.

Every concurrent run, across all worker processes on the host, holds a different slot
N, leased with flock(2) on a root-only lock file, so the kernel releases it when the
holder exits or crashes. Slot N means uid/gid `uid_base + N` (used by nothing else on
the host, so RLIMIT_NPROC counts exactly this run's processes, and a run can never
signal or share files with another) and the cgroups `.../slot-N`.
"""

from __future__ import annotations

import fcntl
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOCK_ROOT = Path("/run/codeloop-sandbox")


class NoFreeSlot(RuntimeError):
    """Every sandbox uid slot is in use (more concurrent runs than `sandbox_slots`)."""


@dataclass(frozen=True)
class Slot:
    index: int
    uid: int


def _try_lock(namespace: str, index: int) -> int | None:
    LOCK_ROOT.mkdir(mode=0o700, exist_ok=True)
    directory = LOCK_ROOT / namespace.replace("/", "_")
    directory.mkdir(mode=0o700, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    fd = os.open(directory / f"slot-{index}.lock", flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def lease(namespace: str, count: int, uid_base: int) -> Iterator[Slot]:
    """Hold a free slot for the duration of the block (NoFreeSlot if all are busy).

    `namespace` is the run cgroups' parent name: slots of different namespaces are
    independent (give them different uid ranges too)."""
    start = random.randrange(count)
    for i in range(count):
        index = (start + i) % count
        fd = _try_lock(namespace, index)
        if fd is None:
            continue
        try:
            yield Slot(index, uid_base + index)
        finally:
            os.close(fd)
        return
    raise NoFreeSlot(f"all {count} sandbox slots are busy")


def idle_slots(namespace: str, count: int) -> Iterator[int]:
    """Slots nobody holds right now (each is locked while the caller handles it)."""
    for index in range(count):
        fd = _try_lock(namespace, index)
        if fd is None:
            continue
        try:
            yield index
        finally:
            os.close(fd)
