"""Where a webhook may go: the address guard.

A callback URL is user input that makes our worker open a connection, so it must not
reach what only the worker can reach: loopback, private and link-local networks (a
cloud's metadata service at 169.254.169.254), multicast, reserved space. The host is
resolved at delivery time, *every* address it resolves to is checked (IPv4 and IPv6;
an IPv6 address that carries an IPv4 one — mapped `::ffff:a.b.c.d`, IPv4-compatible,
6to4, NAT64 — is judged by that IPv4 address too), and the connection is then made to
the checked address (`Target.address`), so a DNS answer that changes between the check
and the connect (rebinding) cannot swap it. Numeric hosts in the legacy forms that
`inet_aton` accepts (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) are read as the
address they name, never sent to DNS.

An operator may allow private targets: all of them (`WEBHOOK_ALLOW_PRIVATE`) or some
networks (`WEBHOOK_ALLOW_CIDRS`). Multicast and unspecified addresses are never allowed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HEX, _OCTAL, _DECIMAL = (re.compile(p) for p in (r"0[xX][0-9a-fA-F]+", r"0[0-7]*", r"[1-9][0-9]*"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class RefusedTarget(Exception):
    """The callback URL may not be delivered to; `reason` says why (recorded on the job)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `address`, speak to `host` (Host, SNI)."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, allow_private: bool, allow_cidrs: str) -> AddressPolicy:
        cidrs = [c.strip() for c in allow_cidrs.split(",") if c.strip()]
        nets = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        return cls(allow_private=allow_private, allowed=nets)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why `ip` may not be delivered to, or None if it may."""
        # An IPv6 form of an IPv4 address reaches that IPv4 address: judge that one.
        address: IPAddress = embedded_ipv4(ip) or ip
        kind = forbidden_kind(address)
        if kind is None:
            return None
        what = f"{ip} (that is {address})" if address != ip else str(ip)
        if kind in ("multicast", "unspecified"):
            return f"{what} is {_article(kind)} {kind} address"
        if self.allow_private or any(address in net for net in self.allowed):
            return None
        return (
            f"{what} is {_article(kind)} {kind} address; set "
            "CODELOOP_WEBHOOK_ALLOW_PRIVATE or CODELOOP_WEBHOOK_ALLOW_CIDRS to allow it"
        )


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def forbidden_kind(ip: IPAddress) -> str | None:
    """What makes `ip` no public internet address ("loopback", "private", ...), or None."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:  # before private: Python counts 240/4 as both
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:  # shared address space (100.64/10) and the like
        return "non-global"
    return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, if any (mapped, compatible, 6to4, NAT64)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a numeric host names, in any form a resolver would accept; None for
    a name. `[::1]` and `::1` are IPv6; `2130706433`, `0x7f000001`, `0177.0.0.1`,
    `127.1` are all 127.0.0.1 (inet_aton's forms: 1-4 parts, decimal/octal/hex)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    with contextlib.suppress(ValueError):  # not a standard form: try inet_aton's
        return ipaddress.ip_address(bare)
    parts = bare.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        value = _inet_aton_part(part)
        if value is None:
            return None
        values.append(value)
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (5 - len(values))):
        return None
    number = 0
    for v in head:
        number = number << 8 | v
    number = number << (8 * (5 - len(values))) | last
    return ipaddress.IPv4Address(number)


def _inet_aton_part(part: str) -> int | None:
    """One part as inet_aton reads it: 0x-hex, 0-octal or decimal, digits only (no
    sign, space or underscore, which Python's int() would let through)."""
    if _HEX.fullmatch(part):
        return int(part[2:], 16)
    if _OCTAL.fullmatch(part):
        return int(part, 8)
    if _DECIMAL.fullmatch(part):
        return int(part, 10)
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every TCP address `host` resolves to (A and AAAA), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_target(url: str, policy: AddressPolicy, resolver: Resolver = system_resolver) -> Target:
    """Check `url` and pick the address to connect to.

    Raises `RefusedTarget` (final: recorded, never retried) for a URL or address that
    may not be used, and `OSError` (`socket.gaierror`) when the name does not resolve
    now (worth retrying)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedTarget(f"invalid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise RefusedTarget("only http and https callback URLs are delivered")
    if parts.username is not None or parts.password is not None:
        raise RefusedTarget("callback URLs may not carry credentials")
    host = parts.hostname or ""
    if not host:
        raise RefusedTarget("the callback URL has no host")
    port = port or (443 if scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    literal = parse_ip_literal(host)
    if literal is not None:
        addresses: Iterable[str] = [str(literal)]
        host = str(literal) if literal.version == 4 else host
    else:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise RefusedTarget(f"invalid host name: {host!r}") from exc
        addresses = resolver(ascii_host, port)
        host = ascii_host
    checked: list[IPAddress] = []
    for raw in addresses:
        ip = ipaddress.ip_address(raw.split("%", 1)[0])
        if (reason := policy.refusal(ip)) is not None:
            where = "" if literal is not None else f"{host} resolves to {ip}; "
            raise RefusedTarget(where + reason)
        checked.append(ip)
    if not checked:
        raise socket.gaierror(f"{host} resolved to no address")
    return Target(scheme=scheme, host=host, port=port, path=path, address=str(checked[0]))
