"""Placeholder and weak secrets are refused once a process is reachable beyond loopback
(app/core/secret_policy.py, `Settings`), and the refusal never prints the secret."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.config import Settings
from app.core.secret_policy import InsecureSettings, is_placeholder

STRONG = "k3H9vQm2L0pXw7RzT5nB8cYd"
EXPOSED: dict[str, Any] = {"api_host": "0.0.0.0"}


@pytest.mark.parametrize(
    "value",
    ["changeme", "Change-Me", "change_me_please", "secret", "SECRET", "password", "codeloop",
     "replace-me-with-a-real-key", "your-secret-here", "example", "xxx", "123456", ""],
)  # fmt: skip
def test_placeholders(value):
    assert is_placeholder(value)


@pytest.mark.parametrize("value", [STRONG, "cl_4f1c9b0e2d7a4c55b8e0", "correct-horse-battery"])
def test_real_values_are_no_placeholders(value):
    assert not is_placeholder(value)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [("api_keys", f"{STRONG},changeme", "CODELOOP_API_KEYS is a placeholder"),
     ("api_keys", "cl_short", "CODELOOP_API_KEYS is shorter than 16"),
     ("events_token_secret", "secret", "CODELOOP_EVENTS_TOKEN_SECRET is a placeholder"),
     ("webhook_secret", "change-me", "CODELOOP_WEBHOOK_SECRET is a placeholder"),
     ("webhook_secret", "hunter2", "CODELOOP_WEBHOOK_SECRET is shorter than 16"),
     ("database_url", "postgresql+psycopg://codeloop:codeloop@db/codeloop",
      "CODELOOP_DATABASE_URL has a placeholder password"),
     ("redis_url", "redis://:password@127.0.0.1:6379/0",
      "CODELOOP_REDIS_URL has a placeholder password")],
)  # fmt: skip
def test_beyond_loopback_a_placeholder_is_refused_by_name_not_value(field, value, named):
    with pytest.raises(InsecureSettings) as refused:
        Settings(**EXPOSED, **{field: value})
    message = str(refused.value)
    assert named in message and "CODELOOP_API_HOST=0.0.0.0" in message
    assert "secrets.token_urlsafe" in message


def test_the_refusal_never_prints_a_value():
    values: dict[str, Any] = {"api_keys": "cl_Zq81x", "webhook_secret": "changeme-Wv93k",
              "database_url": "postgresql+psycopg://u:change-me-Pj27@db/x"}  # fmt: skip
    with pytest.raises(InsecureSettings) as refused:
        Settings(**EXPOSED, **values)
    message = str(refused.value)
    for marker in ("Zq81x", "Wv93k", "Pj27"):
        assert marker not in message
    for named in ("CODELOOP_API_KEYS", "CODELOOP_WEBHOOK_SECRET", "CODELOOP_DATABASE_URL"):
        assert named in message


def test_flower_password_from_flowers_own_variable(monkeypatch):
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:secret")
    with pytest.raises(InsecureSettings, match="FLOWER_BASIC_AUTH has a placeholder password"):
        Settings(**EXPOSED)
    monkeypatch.setenv("FLOWER_BASIC_AUTH", f"ops:{STRONG}")
    assert Settings(**EXPOSED).flower_basic_auth == f"ops:{STRONG}"


def test_a_redis_on_another_host_counts_as_exposed():
    with pytest.raises(InsecureSettings, match=r"Redis at redis\b"):
        Settings(redis_url="redis://redis:6379/0", webhook_secret="changeme")


def test_on_loopback_anything_goes_and_real_secrets_pass_everywhere():
    local = Settings(api_keys="changeme", webhook_secret="secret", events_token_secret="x")
    assert local.exposure is None and local.env_api_keys == ["changeme"]
    exposed = Settings(
        **EXPOSED, api_keys=STRONG, webhook_secret=STRONG, events_token_secret=STRONG,
        database_url=f"postgresql+psycopg://codeloop:{STRONG}@db/codeloop",
    )  # fmt: skip
    assert exposed.exposure == "CODELOOP_API_HOST=0.0.0.0"
    # Empty secrets have safe meanings: no env keys, a per-process events key, no webhooks.
    assert Settings(**EXPOSED).webhook_secret == ""
