"""The interface both sandbox backends implement, and what they are asked to run."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from workers.sandbox.limits import SandboxLimits
from workers.sandbox.result import RunOutcome
from workers.sandbox.runtimes import Family


@dataclass(frozen=True)
class SandboxRun:
    """One program to run: argv inside the sandbox, its read-only files, its stdin."""

    family: Family  # picks the Docker image / the runtime's read-only binds
    argv: list[str]
    files: dict[str, bytes]  # absolute path inside the sandbox (under /code) -> content
    stdin: bytes
    limits: SandboxLimits
    cwd: str = "/tmp"
    # Process backend only: extra (host path, sandbox path) read-only binds, for tools.
    binds: tuple[tuple[str, str], ...] = field(default=())


class SandboxBackend(ABC):
    name: str
    # A backend found incomplete looks again after this long (an operator may be
    # installing what it reported missing); a complete one is not probed again.
    RECHECK_S = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self._checked = 0.0

    def status(self) -> dict[str, Any]:
        """`{"available": bool, "missing": [str], ...}`; cheap after the first call."""
        with self._lock:
            stale = time.monotonic() - self._checked > self.RECHECK_S
            if self._status is None or (stale and not self._complete(self._status)):
                self._status = self._probe()
                self._checked = time.monotonic()
            return self._status

    @abstractmethod
    def _probe(self) -> dict[str, Any]:
        """Check the host (and start what must be swept); never raises."""

    def _complete(self, status: dict[str, Any]) -> bool:
        return bool(status["available"])

    def available(self) -> bool:
        return bool(self.status()["available"])

    @abstractmethod
    def run(self, run: SandboxRun, *, cancel: threading.Event | None = None) -> RunOutcome:
        """Run to completion, the wall clock, the output cap or `cancel`; never raises
        for what the program does (failures of the sandbox itself go to `error`)."""
