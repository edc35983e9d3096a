"""Assemble a minimal root filesystem for a sandbox image from this host's files.

For hosts (and CI) that cannot reach a registry: `scripts/build-sandbox-images.sh`
stages one of these per runtime family and `docker import`s it. It copies a runtime's
files, its linter (lint runs in the sandbox too), the shared libraries `ldd` says they
need, a shell and `head` (the docker backend's driver needs both), and nothing else -
no package manager, no setuid binaries. With a registry, the Dockerfiles in
workers/sandbox/images/ build the same tags from the official slim images instead.

Usage: python -m workers.sandbox.rootfs {python,node,java} DEST [--tools-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from workers.sandbox.lint import find_ruff
from workers.sandbox.runtimes import CHECKSTYLE_JARS, RUFF_BIN, TOOLS_MOUNT

COMMON = ["/bin/sh", "/usr/bin/dash", "/usr/bin/head", "/usr/bin/cat", "/usr/bin/env"]
# Byte code stays: the image is read-only, so Python could not cache it at run time.
SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "man",
    "demo",
    "sample",
    "jmods",
    "include",
}
SKIP_FILES = {"src.zip", "ct.sym"}
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


class Stage:
    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.seen: set[str] = set()
        self.elves: set[str] = set()

    def add(self, path: str) -> None:
        """Copy `path` (following its symlinks, recreating them) under the stage."""
        if not os.path.lexists(path):
            return
        canon = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if canon in self.seen:
            return
        self.seen.add(canon)
        target = self.dest / canon.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(canon):
            link = os.readlink(canon)
            if not target.is_symlink():
                os.symlink(link, target)
            self.add(os.path.join(os.path.dirname(canon), link))
        elif os.path.isdir(canon):
            target.mkdir(exist_ok=True)
        elif os.path.isfile(canon):
            shutil.copy2(canon, target)
            os.chmod(target, os.stat(canon).st_mode & 0o755)  # no setuid/setgid bits
            if _is_elf(canon):
                self.elves.add(canon)

    def add_tree(self, root: str) -> None:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            self.add(dirpath)
            for name in filenames:
                if name not in SKIP_FILES:
                    self.add(os.path.join(dirpath, name))
            for name in dirnames:
                if os.path.islink(os.path.join(dirpath, name)):
                    self.add(os.path.join(dirpath, name))

    def add_libraries(self) -> None:
        """Add what the dynamic loader will need, until nothing new turns up."""
        done: set[str] = set()
        while pending := self.elves - done:
            for elf in sorted(pending):
                done.add(elf)
                for lib in _ldd(elf):
                    self.add(lib)

    def finish(self) -> None:
        for link in ("bin", "lib", "lib64", "sbin"):
            usr = self.dest / "usr" / link
            top = self.dest / link
            if usr.exists() and not top.exists() and not top.is_symlink():
                os.symlink(f"usr/{link}", top)
        # No /code: Docker would give the tmpfs mounted there this directory's mode.
        for d in ("tmp", "etc"):
            (self.dest / d).mkdir(exist_ok=True)
        (self.dest / "tmp").chmod(0o1777)
        (self.dest / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/sh\n"
        )
        (self.dest / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        shutil.copy2("/etc/ld.so.conf", self.dest / "etc/ld.so.conf")
        if os.path.isdir("/etc/ld.so.conf.d"):
            shutil.copytree("/etc/ld.so.conf.d", self.dest / "etc/ld.so.conf.d", dirs_exist_ok=True)
        subprocess.run(["ldconfig", "-r", str(self.dest)], check=True)


def _copy(src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    os.chmod(dst, 0o755)


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _ldd(path: str) -> Iterable[str]:
    proc = subprocess.run(["ldd", path], capture_output=True, text=True)
    return [] if proc.returncode else _LDD_PATH.findall(proc.stdout)


def build(family: str, dest: Path, tools_dir: Path) -> None:
    stage = Stage(dest)
    for path in COMMON:
        stage.add(path)
    if family == "python":
        stage.add("/usr/bin/python3")
        version = os.path.basename(os.path.realpath("/usr/bin/python3"))  # python3.11
        stage.add_tree(f"/usr/lib/{version}")
        ruff = find_ruff()
        if ruff is None:
            sys.exit("ruff not found: run this with the Python that has codeloop[execute]")
        _copy(ruff, dest / RUFF_BIN.lstrip("/"))
        stage.elves.add(ruff)
    elif family == "node":
        stage.add("/usr/bin/node")
        if not (tools_dir / "node_modules").is_dir():
            sys.exit(f"{tools_dir}/node_modules missing: run scripts/install-sandbox-deps.sh")
        opt = dest / TOOLS_MOUNT.lstrip("/")
        shutil.copytree(tools_dir, opt, symlinks=True)
    elif family == "java":
        java_home = Path(os.path.realpath("/usr/bin/java")).parent.parent
        stage.add_tree(str(java_home))
        for conf in Path("/etc").glob("java-*"):
            stage.add_tree(str(conf))
        (dest / "usr/bin").mkdir(parents=True, exist_ok=True)
        for tool in ("java", "javac"):
            if (java_home / "bin" / tool).exists() and not (dest / "usr/bin" / tool).exists():
                os.symlink(java_home / "bin" / tool, dest / "usr/bin" / tool)
        for jar in CHECKSTYLE_JARS:
            stage.add(jar)
    else:
        sys.exit(f"unknown family {family!r}")
    stage.add_libraries()
    stage.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=["python", "node", "java"])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--tools-dir", type=Path, default=Path("/opt/codeloop/sandbox-tools"))
    args = parser.parse_args()
    if args.dest.exists() and any(args.dest.iterdir()):
        sys.exit(f"{args.dest} is not empty")
    args.dest.mkdir(parents=True, exist_ok=True)
    build(args.family, args.dest, args.tools_dir)


if __name__ == "__main__":
    main()
