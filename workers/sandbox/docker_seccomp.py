"""The seccomp profile of sandbox containers: Docker's default minus our deny list.

Docker's default profile is an allow list, but it still allows what a sandbox has no
use for and kernel exploits love: ptrace, io_uring, userfaultfd, perf_event_open,
sockets of every family. This profile is Docker's own default (moby v20.10.24,
profiles/seccomp/default.json, Apache-2.0, vendored in docker/) with every syscall of
seccomp.DENIED_SYSCALLS taken out of its allow rules, and socket/socketpair allowed for
AF_UNIX only - the same surface as the process backend. Calls it no longer allows fail
with EPERM, the profile's default action.
"""

from __future__ import annotations

import json
import socket
from functools import lru_cache
from pathlib import Path

from workers.sandbox.seccomp import DENIED_SYSCALLS

MOBY_DEFAULT = Path(__file__).with_name("docker") / "moby-default-seccomp.json"


@lru_cache(maxsize=1)
def profile_json() -> str:
    """The profile as the JSON text `security_opt=["seccomp=..."]` takes."""
    profile = json.loads(MOBY_DEFAULT.read_text())
    denied = {*DENIED_SYSCALLS, "socket", "socketpair"}
    rules = []
    for rule in profile["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW":
            names = [n for n in rule["names"] if n not in denied]
            if not names:
                continue
            rule = {**rule, "names": names}
        rules.append(rule)
    only_unix = {"index": 0, "value": socket.AF_UNIX, "valueTwo": 0, "op": "SCMP_CMP_EQ"}
    rules.append(
        {"names": ["socket", "socketpair"], "action": "SCMP_ACT_ALLOW", "args": [only_unix]}
    )
    profile["syscalls"] = rules
    return json.dumps(profile, separators=(",", ":"))
