"""The webhook address guard and the pinned POST (workers/webhooks/guard.py, client.py).

Resolution is injected where a test needs a name to resolve to a given address, so no
test sends a packet anywhere but to the loopback receiver it runs itself.
"""

from __future__ import annotations

import ipaddress
import json
import socket

import pytest

from app.core.config import Settings
from tests.webhook_receiver import running_receiver
from workers.webhooks import client
from workers.webhooks.deliver import UNSIGNED, attempt
from workers.webhooks.guard import (
    AddressPolicy,
    RefusedTarget,
    embedded_ipv4,
    parse_ip_literal,
    resolve_target,
)

DENY = AddressPolicy()


@pytest.mark.parametrize(
    ("host", "address"),
    [("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
     ("0x7f.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("0", "0.0.0.0"),
     ("10.1", "10.0.0.1"), ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
     ("[::1]", "::1"), ("::ffff:127.0.0.1", "::ffff:7f00:1"), ("8.8.8.8", "8.8.8.8")],
)  # fmt: skip
def test_numeric_hosts_are_read_as_the_address_a_resolver_would_use(host, address):
    assert parse_ip_literal(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "host", ["example.com", "1.2.3.4.5", "256.1.1.1", "1.16777216", "08.1.1.1", "0x", "1e3", ""]
)
def test_names_and_invalid_numbers_are_not_addresses(host):
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    ("address", "kind"),
    [("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
     ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
     ("fd12::1", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
     ("100.64.0.1", "non-global"), ("240.0.0.1", "reserved"), ("0.0.0.0", "unspecified"),
     ("::", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
     # IPv6 forms of IPv4 addresses are judged by the IPv4 address they carry
     ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
     ("::127.0.0.1", "loopback"), ("64:ff9b::a00:1", "private"), ("2002:a00:1::", "private")],
)  # fmt: skip
def test_non_public_addresses_are_refused_with_their_kind(address, kind):
    reason = DENY.refusal(ipaddress.ip_address(address))
    assert reason is not None and f"{kind} address" in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert DENY.refusal(ipaddress.ip_address(address)) is None


def test_embedded_ipv4_of_mapped_compatible_6to4_and_nat64():
    assert embedded_ipv4(ipaddress.ip_address("::ffff:1.2.3.4")) == ipaddress.ip_address("1.2.3.4")
    assert embedded_ipv4(ipaddress.ip_address("::1.2.3.4")) == ipaddress.ip_address("1.2.3.4")
    assert embedded_ipv4(ipaddress.ip_address("2002:102:304::")) == ipaddress.ip_address("1.2.3.4")
    assert embedded_ipv4(ipaddress.ip_address("64:ff9b::102:304")) == ipaddress.ip_address(
        "1.2.3.4"
    )
    assert embedded_ipv4(ipaddress.ip_address("::1")) is None
    assert embedded_ipv4(ipaddress.ip_address("2606:4700::1")) is None


def test_the_allowances():
    loopback = ipaddress.ip_address("127.0.0.1")
    assert AddressPolicy(allow_private=True).refusal(loopback) is None
    assert AddressPolicy(allow_private=True).refusal(ipaddress.ip_address("fe80::1")) is None
    # multicast and unspecified are never a receiver
    assert AddressPolicy(allow_private=True).refusal(ipaddress.ip_address("224.0.0.1"))
    assert AddressPolicy(allow_private=True).refusal(ipaddress.ip_address("0.0.0.0"))
    only_ten = AddressPolicy.from_settings(False, " 10.0.0.0/8 , fd00::/8")
    assert only_ten.refusal(ipaddress.ip_address("10.9.8.7")) is None
    assert only_ten.refusal(ipaddress.ip_address("::ffff:10.9.8.7")) is None
    assert only_ten.refusal(ipaddress.ip_address("fd00::5")) is None
    assert only_ten.refusal(loopback) is not None
    assert only_ten.refusal(ipaddress.ip_address("192.168.0.1")) is not None


def fixed(*answers: str):
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return list(answers)

    resolver.calls = calls  # type: ignore[attr-defined]
    return resolver


def test_a_name_is_refused_if_any_address_it_resolves_to_is():
    with pytest.raises(RefusedTarget) as refused:
        resolve_target("https://hooks.example/x", DENY, fixed("93.184.216.34", "10.0.0.5"))
    assert "hooks.example resolves to 10.0.0.5" in refused.value.reason


def test_a_public_name_is_pinned_to_the_address_that_was_checked():
    resolver = fixed("93.184.216.34", "2606:2800:220:1::1")
    target = resolve_target("https://Hooks.Example:8443/in?x=1", DENY, resolver)
    assert target.address == "93.184.216.34" and target.host == "hooks.example"
    assert target.port == 8443 and target.path == "/in?x=1" and target.scheme == "https"
    assert resolver.calls == ["hooks.example"]  # resolved once, for the check


@pytest.mark.parametrize(
    "url",
    ["http://2130706433/", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/", "http://[::1]/",
     "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://10.0.0.1/"],
)  # fmt: skip
def test_numeric_urls_never_reach_dns_and_are_refused(url):
    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError(f"{host} went to DNS")

    with pytest.raises(RefusedTarget):
        resolve_target(url, DENY, no_dns)


@pytest.mark.parametrize(
    ("url", "why"),
    [("ftp://example.com/", "only http and https"), ("http://u:p@example.com/", "credentials"),
     ("http:///x", "no host"), ("http://example.com:99999/", "invalid URL")],
)  # fmt: skip
def test_urls_that_may_not_be_used(url, why):
    with pytest.raises(RefusedTarget) as refused:
        resolve_target(url, DENY, fixed("93.184.216.34"))
    assert why in refused.value.reason


def test_a_name_that_does_not_resolve_is_an_oserror_worth_retrying():
    def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(OSError):
        resolve_target("http://nowhere.invalid/", DENY, nxdomain)


def test_the_post_connects_to_the_pinned_address_and_names_the_host():
    """The name does not exist in any DNS: only the pinned address can have been used."""
    with running_receiver() as receiver:
        allow = AddressPolicy(allow_private=True)
        target = resolve_target(
            f"http://hooks.invalid:{receiver.port}/in", allow, fixed("127.0.0.1")
        )
        answer = client.post(target, b'{"a": 1}', {"X-Test": "1"}, timeout_s=3)
        [got] = receiver.to("/in")
    assert answer.status == 200
    assert got.headers["Host"] == f"hooks.invalid:{receiver.port}"
    assert got.body == b'{"a": 1}' and got.headers["X-Test"] == "1"


def test_retry_after_is_read_and_redirects_are_not_followed():
    with running_receiver() as receiver:
        receiver.script("/busy", (429, {"Retry-After": "7"}))
        receiver.script("/moved", (301, {"Location": "/target"}))
        target = resolve_target(receiver.url("/busy"), AddressPolicy(allow_private=True))
        assert client.post(target, b"{}", {}, timeout_s=3) == client.Answer(429, 7.0)
        target = resolve_target(receiver.url("/moved"), AddressPolicy(allow_private=True))
        assert client.post(target, b"{}", {}, timeout_s=3).status == 301
        assert receiver.to("/target") == []


def test_no_secret_means_no_request():
    with running_receiver() as receiver:
        settings = Settings(webhook_secret="", webhook_allow_private=True)
        outcome = attempt(receiver.url("/x"), json.dumps({}).encode(), "job", 1, settings)
        assert receiver.requests == []
    assert outcome.error == UNSIGNED and outcome.retry_in is None and not outcome.delivered


def test_a_429_waits_at_least_its_retry_after_up_to_the_cap():
    with running_receiver() as receiver:
        receiver.script("/slow", (429, {"Retry-After": "30"}))
        settings = Settings(
            webhook_secret="s" * 32, webhook_allow_private=True, webhook_backoff_s=1,
            webhook_backoff_max_s=10,
        )  # fmt: skip
        outcome = attempt(receiver.url("/slow"), b"{}", "job", 1, settings)
    assert outcome.status_code == 429 and outcome.retry_in == 10


def test_a_dead_receiver_is_a_network_error_worth_retrying():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(webhook_secret="s" * 32, webhook_allow_private=True)
    outcome = attempt(f"http://127.0.0.1:{port}/", b"{}", "job", 1, settings)
    assert outcome.error is not None and outcome.error.startswith("network: ")
    assert outcome.retry_in == settings.webhook_backoff_s


@pytest.mark.parametrize(
    "host",
    ["0", "00", "0x", "0x.1", "127.1", "0x7f.1", "0177.0.0.1", "1.", "127.0.0.1.", " 127.0.0.1",
     "0x1g", "0x7_f.1", "+127.1", "4294967295", "4294967296", "1.2.65535", "1.2.65536", "09"],
)  # fmt: skip
def test_the_numeric_forms_match_the_system_inet_aton(host):
    try:
        expected = ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        expected = None
    assert parse_ip_literal(host) == expected
