"""API keys: hashed in SQL, Bearer auth, jobs visible only to their owner."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import free_port
from tests.support import ROOT, ApiServer, _env


def create_key(env: dict[str, str], name: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", name],
        env=_env(env), cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.fixture
def secured_api(service_env, tmp_path):
    keys = {name: create_key(service_env, name) for name in ("alice", "bob")}
    api = ApiServer(service_env, free_port(), tmp_path / "api.log").wait_ready()
    yield api, keys
    api.stop()


def test_keys_are_required_hashed_and_scoped(secured_api, service_env):
    api, keys = secured_api
    alice = {"Authorization": f"Bearer {keys['alice']}"}
    bob = {"Authorization": f"Bearer {keys['bob']}"}
    with httpx.Client(base_url=api.url, timeout=30) as http:
        missing = http.post("/generate_code", json={"task": "x"})
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = http.get("/jobs", headers={"Authorization": "Bearer cl_nope"})
        assert wrong.status_code == 401

        job = http.post("/generate_code", json={"task": "x"}, headers=alice)
        assert job.status_code == 202
        job_id = job.json()["id"]
        assert http.get(f"/jobs/{job_id}", headers=alice).status_code == 200
        for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/events"):
            assert http.get(path, headers=bob).status_code == 404
        assert http.post(f"/jobs/{job_id}/cancel", headers=bob).status_code == 404
        assert http.get("/jobs", headers=bob).json()["items"] == []
        assert [j["id"] for j in http.get("/jobs", headers=alice).json()["items"]] == [job_id]
        assert http.get("/healthz").status_code == 200  # probes need no key

    engine = create_engine(service_env["CODELOOP_DATABASE_URL"])
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT key_hash, prefix FROM api_keys")).all()
    engine.dispose()
    assert len(stored) == 2
    for key_hash, prefix in stored:
        assert keys["alice"] not in key_hash and len(key_hash) == 64
        assert prefix in (keys["alice"][:10], keys["bob"][:10])


def test_revoked_key_is_refused(service_env, tmp_path):
    key = create_key(service_env, "temp")
    api = ApiServer(service_env, free_port(), tmp_path / "api.log").wait_ready()
    try:
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(api.url + "/jobs", headers=headers).status_code == 200
        listing = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "list"],
            env=_env(service_env), cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert key not in listing
        key_id = listing.split()[0]
        subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "revoke", key_id],
            env=_env(service_env), cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        # Auth stays on while another key exists; here none does, so a fresh API with an
        # env key must refuse the revoked one.
    finally:
        api.stop()
    env = {**service_env, "CODELOOP_API_KEYS": "cl_envkey"}
    api = ApiServer(env, free_port(), tmp_path / "api2.log").wait_ready()
    try:
        assert httpx.get(api.url + "/jobs", headers=headers).status_code == 401
        ok = httpx.get(api.url + "/jobs", headers={"Authorization": "Bearer cl_envkey"})
        assert ok.status_code == 200
    finally:
        api.stop()


def test_api_refuses_to_start_without_auth_beyond_loopback(service_env, tmp_path):
    env = {**service_env, "CODELOOP_AUTH": "off", "CODELOOP_API_HOST": "0.0.0.0"}
    api = ApiServer(env, free_port(), tmp_path / "api.log")
    assert api.proc.wait(60) != 0
    api.stop()
    assert "refusing to serve 0.0.0.0 without auth" in api.log()
