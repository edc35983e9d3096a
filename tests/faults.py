"""Real faults for tests: a TCP proxy in front of Redis that can lose a reply.

Not a mock: the client talks to the real server through a real socket; the proxy only
decides, on request, to drop the connection after the server has executed a command
and before its reply reaches the client (the "it ran, but the answer was lost" case).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class FlakyProxy:
    """Forwards 127.0.0.1:<port> to a Redis server. `lose_reply_to(b"EVALSHA")` makes the
    next command containing those bytes run on the server while its reply is never
    delivered: the proxy closes that client connection instead."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed: bytes | None = None
        self.replies_lost = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_reply_to(self, marker: bytes) -> None:
        with self._lock:
            self._armed = marker

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            doomed = threading.Event()
            for target, args in ((self._up, (client, upstream)), (self._down, (upstream, client))):
                threading.Thread(target=target, args=(*args, doomed), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, doomed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
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
                if doomed.is_set():  # the server ran it; the client never hears back
                    self.replies_lost += 1
                    break
                client.sendall(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
