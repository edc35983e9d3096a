"""`run_in_colab()`: the whole stack inside a notebook's machine, optionally public.

It starts `codeloop up` (the same processes: embedded Redis, SQLite, one worker per
queue, beat, the API, Flower) as a child process of the notebook, waits for the API,
and, when `NGROK_AUTHTOKEN` is set (the environment, or Colab's Secrets), opens a
pyngrok tunnel to it. A public URL never serves an open API: whenever a tunnel is
opened, auth is forced on and a fresh key is created and printed, once. Then it prints
the URLs and curl commands that work as pasted.

Nothing here needs Colab: outside it the same call starts the stack locally (and says
why there is no tunnel when there is none).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NGROK_TOKEN_ENV = "NGROK_AUTHTOKEN"
READY_TIMEOUT_S = 180.0


def in_colab() -> bool:
    """True inside a Google Colab runtime (its env marker, or its `google.colab` package)."""
    if os.environ.get("COLAB_RELEASE_TAG") or os.environ.get("COLAB_BACKEND_VERSION"):
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


def ngrok_token() -> str | None:
    """NGROK_AUTHTOKEN from the environment or, in Colab, from the notebook's Secrets."""
    token = os.environ.get(NGROK_TOKEN_ENV, "").strip()
    if token or not in_colab():
        return token or None
    try:
        from google.colab import userdata

        return str(userdata.get(NGROK_TOKEN_ENV)).strip() or None
    except Exception:  # no such secret, or access to it not granted
        return None


def no_tunnel_reason(token: str | None) -> str | None:
    """Why no tunnel can be opened, in words a notebook user can act on; None if it can."""
    if not token:
        return (
            f"{NGROK_TOKEN_ENV} is not set, so the API is not public: it answers only inside "
            "this machine. For a public URL, get a token at https://dashboard.ngrok.com, add it "
            f"as {NGROK_TOKEN_ENV} (Colab: the key icon, Secrets) and run this again."
        )
    if importlib.util.find_spec("pyngrok") is None:
        return "pyngrok is not installed (pip install 'codeloop[colab]'): no public URL."
    return None


def curl_commands(url: str, key: str | None) -> list[str]:
    """Commands that work as pasted against `url` (with the key, when there is one)."""
    auth = f" -H {shlex.quote('Authorization: Bearer ' + key)}" if key else ""
    json_header = " -H 'content-type: application/json'"
    task = '{"task": "reverse a string", "language": "python"'
    return [
        f"curl -s -X POST {url}/generate_code{json_header}{auth} -d '{task}}}'",
        f"curl -N -X POST {url}/generate_code{json_header}{auth} -d '{task}, \"stream\": true}}'",
        f"curl -s '{url}/jobs?limit=5'{auth}",
        f"curl -s -X POST {url}/execute_code{json_header}{auth} "
        '-d \'{"language": "python", "code": "print(6 * 7)"}\'',
    ]


@dataclass
class ColabStack:
    """A running stack: where it answers, its key (when auth is on), and how to stop it."""

    local_url: str
    public_url: str | None
    key: str | None
    process: subprocess.Popen[bytes]
    log_path: Path
    _close_tunnel: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.public_url or self.local_url

    def stop(self) -> None:
        """Close the tunnel, then stop every process `codeloop up` started (SIGINT)."""
        if self._close_tunnel is not None:
            self._close_tunnel()
            self._close_tunnel = None
        if self.process.poll() is None:
            self.process.send_signal(2)  # SIGINT: `codeloop up` stops its children
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def run_in_colab(
    *,
    port: int = 8000,
    flower_port: int = 5555,
    data_dir: str | Path | None = None,
    tunnel: bool | None = None,
    require_key: bool | None = None,
    wait_ready: bool = False,
    env: dict[str, str] | None = None,
) -> ColabStack:
    """Start the stack here; open a public tunnel if it can (`tunnel=None`: when a token is
    set); auth on whenever a tunnel is open (`require_key=True` forces it without one)."""
    print(f"codeloop: {'Colab runtime' if in_colab() else 'not in Colab'}; starting the stack")
    token = ngrok_token() if tunnel is not False else None
    reason = no_tunnel_reason(token) if tunnel is not False else "tunnel=False"
    if tunnel and reason:
        raise RuntimeError(f"no tunnel: {reason}")
    public = reason is None
    if not public and tunnel is None:
        print(f"codeloop: no tunnel: {reason}")
    child_env = {**os.environ, **(env or {})}
    data = Path(data_dir or child_env.get("CODELOOP_DATA_DIR") or "./data").resolve()
    child_env["CODELOOP_DATA_DIR"] = str(data)
    child_env.setdefault("CODELOOP_DATABASE_URL", f"sqlite:///{data / 'codeloop.db'}")
    child_env["CODELOOP_API_HOST"] = "127.0.0.1"  # the tunnel, not a public bind, exposes it
    root = str(Path(__file__).resolve().parent.parent)  # so `python -m app.cli` finds us
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH")) if p)
    data.mkdir(parents=True, exist_ok=True)
    key = None
    if public or require_key:  # a public URL never serves an open API
        child_env["CODELOOP_AUTH"] = "on"
        key = _create_key(child_env["CODELOOP_DATABASE_URL"])
    log_path = data / "codeloop-up.log"
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--port", str(port),
         "--flower-port", str(flower_port)],
        env=child_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    local_url = f"http://127.0.0.1:{port}"
    stack = ColabStack(local_url, None, key, process, log_path)
    try:
        _wait_for(stack, "/healthz", 90.0)
        if wait_ready:
            _wait_for(stack, "/readyz", READY_TIMEOUT_S)
        if public and token:
            stack.public_url, stack._close_tunnel = _open_tunnel(token, port)
    except BaseException:
        stack.stop()
        raise
    _print_banner(stack)
    return stack


def _create_key(database_url: str) -> str:
    from app.core.auth import create_key
    from app.core.db import migrate, reset_engine, session_scope

    previous = os.environ.get("CODELOOP_DATABASE_URL")
    os.environ["CODELOOP_DATABASE_URL"] = database_url
    try:
        from app.core.config import reset_settings_cache

        reset_settings_cache()
        reset_engine()
        migrate(database_url)
        with session_scope() as session:
            _row, secret = create_key(session, "colab")
        return secret
    finally:
        if previous is None:
            os.environ.pop("CODELOOP_DATABASE_URL", None)
        else:
            os.environ["CODELOOP_DATABASE_URL"] = previous
        reset_settings_cache()
        reset_engine()


def _wait_for(stack: ColabStack, path: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.process.poll() is not None:
            tail = stack.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"codeloop up exited ({stack.process.returncode}):\n{tail}")
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(stack.local_url + path, timeout=3).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{stack.local_url}{path} not ready after {timeout:.0f}s "
                       f"(see {stack.log_path})")  # fmt: skip


def _open_tunnel(token: str, port: int) -> tuple[str, Callable[[], None]]:
    from pyngrok import conf, ngrok

    conf.get_default().auth_token = token
    tunnel: Any = ngrok.connect(str(port), "http")
    public_url = str(tunnel.public_url).replace("http://", "https://", 1)
    return public_url, lambda: ngrok.disconnect(tunnel.public_url)


def _print_banner(stack: ColabStack) -> None:
    lines = ["", "codeloop is up."]
    if stack.public_url:
        lines.append(f"  public URL  {stack.public_url}   (auth on)")
    lines.append(f"  local URL   {stack.local_url}   (this machine only)")
    lines.append(f"  page        {stack.url}/   docs {stack.url}/docs")
    if stack.key:
        lines += [f"  API key     {stack.key}",
                  "              shown once: copy it now (SQL keeps only its hash)"]  # fmt: skip
    lines += [f"  logs        {stack.log_path}", "",
              "The generate worker loads its model in the background; the first generation "
              "waits for it.", "Try:", ""]  # fmt: skip
    lines += [f"  {command}" for command in curl_commands(stack.url, stack.key)]
    lines += ["", "stack.stop() stops everything.", ""]
    print("\n".join(lines), flush=True)
