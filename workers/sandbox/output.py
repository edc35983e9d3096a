"""Output of a run, collected from a stream with a cap on stdout + stderr together.

The cap is enforced while reading: the backend kills the run as soon as `exceeded` is
set, so a program printing gigabytes costs the worker at most the cap in memory.
"""

from __future__ import annotations


class CappedOutput:
    def __init__(self, cap_bytes: int) -> None:
        self.cap = cap_bytes
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exceeded = False

    @property
    def size(self) -> int:
        return len(self.stdout) + len(self.stderr)

    def add(self, stream: int, data: bytes) -> None:
        """Append `data` to stdout (stream 1) or stderr (stream 2), up to the cap."""
        room = self.cap - self.size
        if len(data) > room:
            self.exceeded = True
            data = data[: max(room, 0)]
        (self.stdout if stream == 1 else self.stderr).extend(data)
