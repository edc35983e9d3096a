"""The docker backend: one throw-away container per run.

Each container: network "none", a read-only root filesystem, tmpfs /tmp and /code
(mode 1777, for a non-root user), uid/gid 65534, every capability dropped,
no-new-privileges, Docker's seccomp profile tightened (docker_seccomp.py), memory =
memory + swap, pids, CPU and rlimits as in limits.py, logging off (the daemon keeps no
copy of the output), and it is always removed, whatever happens.

Nothing crosses the host's filesystem: the code and stdin go in on the attach stream
(`head -c N` copies each file into the container's own tmpfs, then the program reads
the rest of stdin), and stdout/stderr come back on the same stream, which is read with
the output cap applied. So the host never opens, copies out of or chowns a path the
container could have written (the mistake behind Judge0's CVE-2024-28185/28189), and
a remote engine or a worker in a container talking to the host's engine works too.
`put_archive` would not work anyway: the root filesystem is read-only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import socket
import struct
import threading
import time
from typing import Any

from workers.sandbox.backend import SandboxBackend, SandboxRun
from workers.sandbox.config import SandboxConfig
from workers.sandbox.docker_seccomp import profile_json
from workers.sandbox.limits import MIB
from workers.sandbox.output import CappedOutput
from workers.sandbox.result import RunOutcome
from workers.sandbox.runtimes import CODE_DIR, SANDBOX_ENV

log = logging.getLogger(__name__)

LABEL = "org.codeloop.sandbox.owner"  # "<hostname>:<pid>:<process start time>"
STALE_AFTER_S = 3600


class DockerBackend(SandboxBackend):
    name = "docker"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        super().__init__()
        self._api: Any = None

    # -- status ------------------------------------------------------------------

    def _probe(self) -> dict[str, Any]:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        status: dict[str, Any] = {
            "available": False,
            "missing": [],
            "engine": None,
            "docker_host": host,
            "images": {},
        }
        try:
            import docker
        except ImportError:
            status["missing"].append("the docker SDK is not installed (pip install docker)")
            return status
        try:
            client = docker.from_env(timeout=10)
            client.ping()
            status["engine"] = client.version().get("Version")
        except Exception as exc:  # any failure to reach the engine means: no docker
            status["missing"].append(f"no Docker engine answers at {host}: {exc}")
            return status
        self._api = client.api
        for family, image in self.config.images.items():
            try:
                self._api.inspect_image(image)
                status["images"][family] = None
            except docker.errors.ImageNotFound:
                status["images"][family] = (
                    f"image {image} not found (scripts/build-sandbox-images.sh)"
                )
        status["available"] = True
        self._sweep()
        return status

    def _complete(self, status: dict[str, Any]) -> bool:
        return bool(status["available"]) and not any(status["images"].values())

    def _sweep(self) -> None:
        """Remove containers that crashed workers of this host left behind."""
        me = socket.gethostname()
        for c in self._api.containers(all=True, filters={"label": LABEL}):
            owner = c.get("Labels", {}).get(LABEL, "")
            host, _, rest = owner.partition(":")
            old = time.time() - c.get("Created", 0) > STALE_AFTER_S
            if old or (host == me and not _owner_alive(rest)):
                with contextlib.suppress(Exception):
                    self._api.remove_container(c["Id"], force=True)

    # -- running -----------------------------------------------------------------

    def run(self, run: SandboxRun, *, cancel: threading.Event | None = None) -> RunOutcome:
        status = self.status()
        if not status["available"]:
            return RunOutcome(error="docker sandbox unavailable: " + "; ".join(status["missing"]))
        missing_image = status["images"].get(run.family)
        if missing_image:
            return RunOutcome(error=missing_image)
        cid = None
        try:
            cid = self._create(run)
            return self._attach_and_run(cid, run, cancel)
        except Exception as exc:  # the engine failed us; the program is not to blame
            log.exception("docker sandbox failed")
            return RunOutcome(error=f"docker sandbox failed: {exc}")
        finally:
            if cid is not None:
                with contextlib.suppress(Exception):
                    self._api.remove_container(cid, force=True, v=True)

    def _create(self, run: SandboxRun) -> str:
        from docker.types import LogConfig, Ulimit

        lim = run.limits
        # Copy each file from stdin into /code, then run the program on the rest.
        copy = "".join(
            f"head -c {len(content)} > {shlex.quote(path)} && "
            for path, content in run.files.items()
        )
        code_mb = 1 + sum(len(c) for c in run.files.values()) // MIB
        host_config = self._api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs={
                "/tmp": f"rw,nosuid,nodev,size={lim.tmpfs_mb}m,mode=1777",
                CODE_DIR: f"rw,nosuid,nodev,noexec,size={code_mb}m,mode=1777",
            },
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true", "seccomp=" + profile_json()],
            pids_limit=lim.pids,
            mem_limit=lim.memory_bytes,
            memswap_limit=lim.memory_bytes,
            nano_cpus=int(lim.cpus * 1e9),
            ulimits=[
                Ulimit(name="cpu", soft=lim.cpu_seconds, hard=lim.cpu_seconds),
                Ulimit(name="fsize", soft=lim.file_bytes, hard=lim.file_bytes),
                Ulimit(name="nofile", soft=lim.nofile, hard=lim.nofile),
                Ulimit(name="core", soft=0, hard=0),
            ],
            log_config=LogConfig(type="none"),
            ipc_mode="private",
            oom_score_adj=1000,  # first to go if the host runs short of memory
        )
        container = self._api.create_container(
            self.config.images[run.family],
            # No `exec`: the program must not be PID 1, which the kernel shields from
            # its own default-action signals (a SIGSEGV would be ignored).
            command=["sh", "-c", copy + '"$@"', "sh", *run.argv],
            user="65534:65534",
            working_dir=run.cwd,
            environment=SANDBOX_ENV,
            hostname="sandbox",
            stdin_open=True,  # with detach=False: StdinOnce, so our EOF reaches it
            tty=False,
            labels={LABEL: owner_label()},
            host_config=host_config,
        )
        return str(container["Id"])

    def _attach_and_run(
        self, cid: str, run: SandboxRun, cancel: threading.Event | None
    ) -> RunOutcome:
        import docker

        # Its own client: the SDK can hand a hijacked attach connection back to its
        # pool, and the next request on that pool would go to the program's stdin.
        attach_client = docker.from_env(version=self._api.api_version, timeout=10).api
        attached = attach_client.attach_socket(
            cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        )
        sock: socket.socket = getattr(attached, "_sock", attached)
        outcome = RunOutcome()
        output = CappedOutput(run.limits.output_bytes)
        payload = b"".join(run.files.values()) + run.stdin
        try:
            self._api.start(cid)
            started = time.monotonic()
            deadline = started + run.limits.timeout_s
            writer = threading.Thread(target=_feed, args=(sock, payload), daemon=True)
            writer.start()
            reason = _pump(sock, output, deadline, cancel)
            if reason is None:
                reason = self._wait(cid, deadline, cancel)
            if reason is not None:
                # Hang up first: the engine does not report the container dead while
                # its output is still queued for a reader who stopped reading.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(Exception):
                    self._api.kill(cid)
            exit_code = self._api.wait(cid, timeout=30).get("StatusCode")
            duration = time.monotonic() - started
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with contextlib.suppress(Exception):
                attached.close()
            attach_client.close()
        state = self._api.inspect_container(cid)["State"]
        outcome.exit_code = exit_code
        outcome.stdout, outcome.stderr = bytes(output.stdout), bytes(output.stderr)
        outcome.duration_ms = round(duration * 1000)
        outcome.timed_out = reason == "timeout"
        outcome.cancelled = reason == "cancel"
        outcome.output_exceeded = output.exceeded
        outcome.oom_killed = bool(state.get("OOMKilled"))
        return outcome

    def _wait(self, cid: str, deadline: float, cancel: threading.Event | None) -> str | None:
        """The streams closed; wait for the container to exit."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            if cancel is not None and cancel.is_set():
                return "cancel"
            if not self._api.inspect_container(cid)["State"].get("Running"):
                return None
            time.sleep(min(remaining, 0.02))


def _feed(sock: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(payload)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)  # EOF on the program's stdin (stdin_once)


def _pump(
    sock: socket.socket, output: CappedOutput, deadline: float, cancel: threading.Event | None
) -> str | None:
    """Demultiplex Docker's attach stream (8-byte frame headers) into `output`."""
    buf = b""
    while True:
        if cancel is not None and cancel.is_set():
            return "cancel"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        ready, _, _ = select.select([sock], [], [], min(remaining, 0.05))
        if not ready:
            continue
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            return None
        if not data:
            return None
        buf += data
        while len(buf) >= 8:
            stream = buf[0]
            (size,) = struct.unpack(">I", buf[4:8])
            if len(buf) < 8 + size:
                break
            output.add(2 if stream == 2 else 1, buf[8 : 8 + size])
            buf = buf[8 + size :]
            if output.exceeded:
                return "output"


def owner_label() -> str:
    """This process, as the owner label of the containers it creates."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _owner_alive(pid_and_start: str) -> bool:
    pid, _, start = pid_and_start.partition(":")
    return pid.isdigit() and _start_time(int(pid)) == start
