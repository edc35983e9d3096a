"""Real faults for tests: a TCP proxy in front of Redis that can lose a reply or
partition its clients away, and a Redis server that can be stopped and started again.

Not a mock: the client talks to the real server through a real socket; the proxy only
decides, on request, to drop the connection after the server has executed a command
and before its reply reaches the client (the "it ran, but the answer was lost" case),
or to stop passing bytes either way for a while (a network partition: nothing is
refused or reset, commands just get no answer until it heals).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis


class FlakyProxy:
    """Forwards 127.0.0.1:<port> to a Redis server. `lose_reply_to(b"EVALSHA")` makes the
    next command containing those bytes run on the server while its reply is never
    delivered: the proxy closes that client connection instead. `partition()` holds
    every byte, both ways and on new connections too, until `heal()`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed: bytes | None = None
        self.replies_lost = 0
        self._lock = threading.Lock()
        self._open = threading.Event()  # cleared while partitioned
        self._open.set()
        self._live: list[socket.socket] = []
        self._cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_reply_to(self, marker: bytes) -> None:
        with self._lock:
            self._armed = marker

    def partition(self) -> None:
        """From now on nothing passes: clients see their commands hang, not fail."""
        self._open.clear()

    def heal(self) -> None:
        """Everything held (and everything after) flows again, in order."""
        self._open.set()

    def close(self) -> None:
        self.heal()
        with contextlib.suppress(OSError):
            self._listener.close()

    def cut(self) -> None:
        """The upstream is gone for good: live connections drop, new ones are refused."""
        self._cut = True
        with contextlib.suppress(OSError):  # wakes the accept loop (close alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self.close()
        with self._lock:
            live, self._live = self._live, []
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._open.wait()  # partitioned: the connection is accepted, never served
            if self._cut:
                client.close()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the server is down: so is this connection
                client.close()
                continue
            with self._lock:
                self._live += [client, upstream]
            doomed = threading.Event()
            for target, args in ((self._up, (client, upstream)), (self._down, (upstream, client))):
                threading.Thread(target=target, args=(*args, doomed), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, doomed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                self._open.wait()
                with self._lock:
                    if self._armed is not None and self._armed in data.upper():
                        self._armed = None
                        doomed.set()
                upstream.sendall(data)

    def _down(
        self, upstream: socket.socket, client: socket.socket, doomed: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                self._open.wait()
                if doomed.is_set():  # the server ran it; the client never hears back
                    self.replies_lost += 1
                    break
                client.sendall(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class RedisProcess:
    """A private redis-server a test may stop and start again on the same port."""

    def __init__(self, workdir: Path, *, appendonly: bool = False) -> None:
        from tests.conftest import free_port, redis_server_binary

        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._cmd = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if appendonly else "no", "--dir", str(workdir),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    client.close()
                    return
            time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
