"""docker-compose.yml as Compose itself reads it (`docker compose config`): start order by
healthchecks, the GPU on the generate worker only, the Docker socket on the execute worker
only, each secret on the services that need it only, no default database password."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support import ROOT, missing_tool

DOCKER_SOCKET = "/var/run/docker.sock"
# A distinct marker per secret, so a test can tell where each one ends up.
SECRETS = {
    "POSTGRES_PASSWORD": "pgMarker7f3a",
    "FLOWER_BASIC_AUTH": "ops:flowerMarker2c9d",
    "CODELOOP_API_KEYS": "apiKeyMarker5e1b",
    "CODELOOP_EVENTS_TOKEN_SECRET": "eventsMarker8a4c",
    "CODELOOP_WEBHOOK_SECRET": "webhookMarker3d6e",
}
# Who may hold which secret (the database password travels inside the SQL URL).
SECRET_HOLDERS = {
    "POSTGRES_PASSWORD": {"postgres", "api", "gpu-worker", "search-worker", "execute-worker",
                          "maintenance-worker"},
    "FLOWER_BASIC_AUTH": {"flower"},
    "CODELOOP_API_KEYS": {"api"},
    "CODELOOP_EVENTS_TOKEN_SECRET": {"api"},
    "CODELOOP_WEBHOOK_SECRET": {"maintenance-worker"},
}  # fmt: skip


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    missing_tool("neither `docker compose` nor `docker-compose` is installed")
    raise AssertionError("unreachable")


def run_config(**variables: str) -> subprocess.CompletedProcess[str]:
    """`compose config` with only these of our variables set (none from this machine)."""
    ours = ("CODELOOP_", "COMPOSE_", "POSTGRES_", "FLOWER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return subprocess.run(
        [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT, env={**env, **variables}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = run_config(**SECRETS)
    assert result.returncode == 0, result.stderr
    parsed = yaml.safe_load(result.stdout)
    assert isinstance(parsed, dict)
    return parsed


def _bind_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # compose v1: "source:target[:mode]"
            sources.append(volume.split(":", 1)[0])
        else:  # compose v2: the long form
            sources.append(str(volume.get("source", "")))
    return sources


def test_every_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name


def test_every_dependency_waits_for_health(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must carry conditions"
        for dependency, rule in depends.items():
            assert dependency in services, (name, dependency)
            assert rule["condition"] == "service_healthy", (name, dependency)
    for worker in ("gpu-worker", "search-worker", "execute-worker", "maintenance-worker", "beat"):
        # The API runs the migrations: no worker touches SQL before the schema exists.
        assert "api" in services[worker]["depends_on"], worker
    assert set(services["api"]["depends_on"]) == {"redis", "postgres"}


def test_gpu_reserved_by_the_generate_worker_only(config: dict[str, Any]) -> None:
    with_gpu = []
    for name, service in config["services"].items():
        devices = (
            service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        )
        if devices:
            assert any("gpu" in d.get("capabilities", []) for d in devices), name
            with_gpu.append(name)
    assert with_gpu == ["gpu-worker"]
    command = config["services"]["gpu-worker"].get("command")
    assert command is None or "generate" in command  # the image's CMD serves -Q generate


def test_docker_socket_on_the_execute_worker_only(config: dict[str, Any]) -> None:
    with_socket = [
        name for name, service in config["services"].items()
        if DOCKER_SOCKET in _bind_sources(service)
    ]  # fmt: skip
    assert with_socket == ["execute-worker"]
    env = config["services"]["execute-worker"]["environment"]
    assert env["CODELOOP_EXECUTOR_BACKEND"] == "docker"


def test_only_the_api_and_flower_publish_ports(config: dict[str, Any]) -> None:
    published = sorted(name for name, s in config["services"].items() if s.get("ports"))
    assert published == ["api", "flower"]


@pytest.mark.parametrize("missing", ["POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"])
def test_no_default_database_or_flower_password(missing: str) -> None:
    given = {k: v for k, v in SECRETS.items() if k != missing}
    result = run_config(**given)
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr  # the `${VAR:?message}` names what to set


def test_each_secret_reaches_only_the_services_that_need_it(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, marker in SECRETS.items():
        secret = marker.split(":")[-1]
        holders = {n for n, service in services.items() if secret in json.dumps(service)}
        assert holders == SECRET_HOLDERS[name], name
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]


def test_the_execute_worker_gets_only_sql_and_redis(config: dict[str, Any]) -> None:
    env = config["services"]["execute-worker"]["environment"]
    assert not {k for k in env if "KEY" in k or "SECRET" in k or "AUTH" in k}
    assert {"CODELOOP_REDIS_URL", "CODELOOP_DATABASE_URL"} <= set(env)


def test_beat_and_flower_get_no_database_url(config: dict[str, Any]) -> None:
    for name in ("beat", "flower"):
        assert "CODELOOP_DATABASE_URL" not in config["services"][name]["environment"], name


def test_flowers_password_is_in_its_environment_not_its_command(config: dict[str, Any]) -> None:
    flower = config["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    argv = json.dumps([flower.get("command"), flower.get("entrypoint")])
    assert "basic-auth" not in argv and "FLOWER_BASIC_AUTH" not in argv
    assert "flowerMarker" not in argv
