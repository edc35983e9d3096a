"""What an unauthenticated caller or a careless deployment can see: the API refuses to
start beyond loopback with a placeholder secret, and `/readyz` says ok|down, never why."""

from __future__ import annotations

import httpx

from tests.conftest import free_port
from tests.faults import RedisProcess
from tests.support import ApiServer


def test_the_api_refuses_to_start_beyond_loopback_with_a_placeholder_secret(service_env, tmp_path):
    env = {**service_env, "CODELOOP_API_HOST": "0.0.0.0",
           "CODELOOP_WEBHOOK_SECRET": "change-me-Hq4", "CODELOOP_API_KEYS": "cl_Tx91"}  # fmt: skip
    api = ApiServer(env, free_port(), tmp_path / "api.log")
    assert api.proc.wait(60) != 0
    api.stop()
    log = api.log()
    assert "InsecureSettings: refusing to start" in log
    assert "CODELOOP_WEBHOOK_SECRET is a placeholder value" in log
    assert "CODELOOP_API_KEYS is shorter than 16 characters" in log
    assert "Hq4" not in log and "Tx91" not in log


def test_readyz_says_down_without_the_exception_text(service_env, tmp_path):
    redis_server = RedisProcess(tmp_path / "redis")
    dead_sql_port = free_port()  # nothing listens there
    env = {**service_env, "CODELOOP_REDIS_URL": redis_server.url, "CODELOOP_AUTO_MIGRATE": "false",
           "CODELOOP_DATABASE_URL":
               f"postgresql+psycopg://codeloop:pw@127.0.0.1:{dead_sql_port}/codeloop"}  # fmt: skip
    api = ApiServer(env, free_port(), tmp_path / "api.log").wait_ready()
    try:
        redis_server.stop()
        response = httpx.get(api.url + "/readyz", timeout=30)
    finally:
        api.stop()
        redis_server.stop()
    assert response.status_code == 503
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == "unavailable"
    detail = body["error"]["detail"]
    assert detail["status"] == "not_ready"
    assert detail["checks"]["redis"] == "down" and detail["checks"]["sql"] == "down"
    assert set(detail["checks"].values()) == {"down"}  # no worker either
    assert body["error"]["message"].startswith("not ready: redis, sql, queue:")
    text = response.text.lower()
    for leak in ("refused", "connect", "traceback", str(dead_sql_port), str(redis_server.port)):
        assert leak not in text, leak
    log = api.log()  # the operator still learns why
    assert "readyz: Redis is down" in log and "readyz: SQL is down" in log
    assert str(dead_sql_port) in log
