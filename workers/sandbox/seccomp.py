"""The process backend's seccomp filter, exported as BPF for `bwrap --seccomp FD`.

A deny list on top of what the unprivileged uid, the namespaces and the empty
capability set already forbid: these calls are the usual first step of a kernel
exploit or a sandbox escape, and no program in the runtimes table needs them. Denied
calls fail with an errno (not a kill) so that a program sees an ordinary error; the
default action for a foreign architecture (x32, i386 via int 0x80) is libseccomp's
KILL, which closes the classic arch-confusion bypass.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import termios
import threading

DENIED_SYSCALLS = (
    # debugging other processes, reading their memory
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # filesystems and namespaces
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "name_to_handle_at",
    "open_by_handle_at",
    # kernel attack surface with no use in a snippet
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fanotify_init",
    "lookup_dcookie",
    "uselib",
    "ustat",
    "sysfs",
    "vm86",
    "vm86old",
    "iopl",
    "ioperm",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "quotactl",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
)

# clone(2) flags that create namespaces (clone3 hides its flags in memory: see below).
_NAMESPACE_FLAGS = (
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)

_lock = threading.Lock()
_bpf: bytes | None = None


def filter_bpf() -> bytes:
    """The compiled filter (built once per process: ~1 ms, a few hundred bytes)."""
    global _bpf
    with _lock:
        if _bpf is None:
            _bpf = _build()
        return _bpf


def _build() -> bytes:
    import pyseccomp as sc  # needs libseccomp.so.2; imported late so status can report it

    f = sc.SyscallFilter(sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # not on this arch
            f.add_rule(eperm, name)
    # Sockets: only AF_UNIX (local IPC inside the sandbox); no inet, inet6, netlink,
    # packet ... even though the network namespace is empty anyway.
    for call in ("socket", "socketpair"):
        f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.NE, socket.AF_UNIX))
    for flag in _NAMESPACE_FLAGS:
        f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # seccomp cannot read clone3's flags; ENOSYS makes libc fall back to clone().
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # Typing into the controlling terminal of whoever started us.
    for request in (termios.TIOCSTI, getattr(termios, "TIOCLINUX", 0x541C)):
        f.add_rule(eperm, "ioctl", sc.Arg(1, sc.EQ, request))

    fd = os.memfd_create("codeloop-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            f.export_bpf(out)
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)
