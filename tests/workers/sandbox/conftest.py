"""Real sandboxes for the sandbox tests: the `backend` fixture runs a test once per
backend. Process tests need root (CI runs as root) and fail, listing what is missing,
if the process backend is unusable; docker tests are skipped only when no engine
answers at $DOCKER_HOST, /var/run/docker.sock or scripts/start-docker.sh's socket.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import missing_tool
from workers.sandbox import service

DOCKER_HOSTS = ("unix:///var/run/docker.sock", "unix:///var/lib/codeloop-docker/docker.sock")


def _answering_docker_host() -> str | None:
    import docker

    for host in (os.environ.get("DOCKER_HOST"), *DOCKER_HOSTS):
        if not host:
            continue
        try:
            client = docker.DockerClient(base_url=host, timeout=3)
            try:
                client.ping()
                return host
            finally:
                client.close()
        except Exception:
            continue
    return None


@pytest.fixture(scope="session")
def process_ready() -> None:
    if os.geteuid() != 0:
        missing_tool("the process backend needs root (CI runs the suite as root)")
    service.reset()
    status = service.select_backend("process").status()
    assert status["available"], f"process backend unusable: {status['missing']}"
    missing = {k: v for k, v in status["runtimes"].items() if v}
    assert not missing, f"runtimes missing (scripts/install-sandbox-deps.sh): {missing}"


@pytest.fixture(scope="session")
def docker_ready() -> Iterator[None]:
    host = _answering_docker_host()
    if host is None:
        missing_tool('no Docker engine answers (eval "$(scripts/start-docker.sh)")')
    assert host is not None  # missing_tool skipped or failed the test
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = host
    service.reset()
    status = service.select_backend("docker").status()
    assert status["available"], status["missing"]
    missing = {k: v for k, v in status["images"].items() if v}
    assert not missing, f"images missing (scripts/build-sandbox-images.sh): {missing}"
    yield
    if saved is None:
        os.environ.pop("DOCKER_HOST", None)
    else:
        os.environ["DOCKER_HOST"] = saved
    service.reset()


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend's name; `service.execute` uses it for the test."""
    request.getfixturevalue(f"{request.param}_ready")
    service.select_backend(request.param)
    return str(request.param)


@pytest.fixture
def process_backend(process_ready: None) -> str:
    service.select_backend("process")
    return "process"
