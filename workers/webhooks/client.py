"""One webhook POST to a checked address (`guard.Target`).

Plain `http.client`, so nothing resolves the host a second time: the socket connects to
the address the guard checked, while the Host header and TLS (SNI and certificate
checks) use the URL's host name. Redirects are never followed (`http.client` follows
none), every socket operation has a short timeout, and at most a few bytes of the
answer are read: only its status matters.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass

from workers.webhooks.guard import Target

BODY_READ_CAP = 1024  # bytes of the receiver's answer we read (and then discard)
USER_AGENT = "codeloop-webhook/1"


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after_s: float | None


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address = target.address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def post(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_s: float,
    tls: ssl.SSLContext | None = None,
) -> Answer:
    """POST `body`; the receiver's status (and Retry-After). Network trouble raises
    `OSError` or `http.client.HTTPException` (both worth a retry)."""
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = _PinnedHTTPS(target, timeout_s, tls or ssl.create_default_context())
    else:
        conn = _PinnedHTTP(target, timeout_s)
    try:
        conn.request(
            "POST",
            target.path,
            body=body,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        )
        response = conn.getresponse()
        response.read(BODY_READ_CAP)
        return Answer(response.status, _retry_after(response.getheader("Retry-After")))
    finally:
        conn.close()


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is ignored: backoff applies)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
