"""Which secret values a process beyond loopback refuses to start with.

A placeholder ("changeme", "secret", the `.env.example` values, ...) or a short
machine secret is fine on a laptop and a breach on a network, so `Settings` refuses
them once the process is *exposed*: the API binds beyond loopback, or the process
talks to a Redis on another host (it is part of a deployment). Messages name the
setting, never its value (they end up in logs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

# Compared after lower-casing and dropping everything but letters and digits, so
# "Change-Me", "change_me" and "CHANGEME" are one entry.
PLACEHOLDERS = frozenset({
    "", "admin", "apikey", "changeme", "codeloop", "default", "demo", "dummy", "example",
    "flower", "guest", "key", "letmein", "none", "null", "pass", "passw0rd", "passwd",
    "password", "placeholder", "postgres", "pw", "qwerty", "redis", "root", "sample",
    "secret", "secretkey", "supersecret", "test", "testing", "todo", "token", "topsecret",
    "user", "webhooksecret", "xxx", "xxxx", "123456", "12345678", "123456789",
})  # fmt: skip
PLACEHOLDER_PREFIXES = ("changeme", "replaceme", "setme", "your", "example", "placeholder")
# Keys and HMAC secrets a machine makes (`secrets.token_urlsafe(32)` is 43 characters).
MIN_SECRET_CHARS = 16
GENERATE_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class InsecureSettings(RuntimeError):
    """A process reachable beyond loopback was given a placeholder or weak secret.

    Not a ValueError on purpose: pydantic would wrap it and print every input, the
    secrets included."""


def is_placeholder(value: str) -> bool:
    normal = re.sub(r"[^a-z0-9]", "", value.lower())
    return normal in PLACEHOLDERS or normal.startswith(PLACEHOLDER_PREFIXES)


def machine_secret_problem(name: str, value: str) -> str | None:
    """Why a key or HMAC secret is unfit beyond loopback, or None."""
    if is_placeholder(value):
        return f"{name} is a placeholder value"
    if len(value) < MIN_SECRET_CHARS:
        return f"{name} is shorter than {MIN_SECRET_CHARS} characters"
    return None


def password_problem(name: str, value: str | None) -> str | None:
    """Why a password somebody typed (Flower's, the database's) is unfit, or None."""
    if value is not None and is_placeholder(value):
        return f"{name} has a placeholder password"
    return None


def url_password(url: str) -> str | None:
    """The password in a URL's userinfo (percent-decoded), or None."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return None if password is None else unquote(password)


def flower_problems(basic_auth: str) -> Iterable[str]:
    """`user:password[,user:password…]`, Flower's own format."""
    for pair in filter(None, (p.strip() for p in basic_auth.split(","))):
        _user, sep, password = pair.partition(":")
        if not sep or not password:
            yield "FLOWER_BASIC_AUTH must be user:password"
        elif problem := password_problem("FLOWER_BASIC_AUTH", password):
            yield problem


def refusal_message(problems: list[str], where: str) -> str:
    listed = "; ".join(problems)
    return (
        f"refusing to start: {listed} while this process is reachable beyond loopback "
        f"({where}). Set real secrets (e.g. `{GENERATE_HINT}`), or bind to loopback."
    )
