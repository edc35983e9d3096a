"""How each language of SPEC §8 runs inside a sandbox (either backend).

Every run sees the same layout: the code, read-only, at `/code/<source_name>`; a
writable tmpfs at `/tmp` (also the working directory and HOME); the pinned npm tools at
`/opt/codeloop` (node family). A runtime turns limits into an argv for that layout and
tells a compilation error from a runtime error afterwards.

Compilation happens inside the sandbox, in the same run: esbuild resolving an import
such as "/etc/shadow" on the host would read the host's files. A failed esbuild step
prints a per-run random marker line to stderr, which the program itself never sees
(the driver `exec`s the program only after a successful build), so a program cannot
fake a compilation error. Java's source launcher and Python report compilation errors
in a recognisable way of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from workers.sandbox.limits import SandboxLimits

CODE_DIR = "/code"
TOOLS_MOUNT = "/opt/codeloop"  # the npm tools (and ruff), read-only, in both backends
BUILD_DIR = "/tmp/.codeloop-build"
RUFF_BIN = f"{TOOLS_MOUNT}/bin/ruff"
ESLINT_JS = f"{TOOLS_MOUNT}/node_modules/eslint/bin/eslint.js"
ESLINT_CONFIG = f"{TOOLS_MOUNT}/eslint.config.mjs"
ESLINT_TS_CONFIG = f"{TOOLS_MOUNT}/eslint.ts.config.mjs"
# Debian's checkstyle wrapper's class path plus the jar manifest's (antlr 2); the
# official image's single "-all" jar is the last entry, and missing entries are ignored.
CHECKSTYLE_JARS = tuple(
    f"/usr/share/java/{name}.jar"
    for name in (
        "antlr",
        "antlr4-runtime",
        "commons-lang3",
        "commons-beanutils",
        "commons-collections3",
        "guava",
        "commons-cli",
        "commons-logging",
        "picocli",
        "Saxon-HE",
        "reflections",
        "checkstyle",
    )
)

Family = Literal["python", "node", "java"]
Kind = Literal["python", "node", "esbuild", "java"]

SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin:/opt/java/openjdk/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}

_ESBUILD_LOADER = {".ts": "ts", ".tsx": "tsx", ".jsx": "jsx", ".js": "jsx"}
# NestJS-style code uses legacy decorators; esbuild needs to be told.
_TSCONFIG_RAW = json.dumps({"compilerOptions": {"experimentalDecorators": True}})

# The driver's compile step failed: print the marker ($1) last on stderr, exit 1.
_FAIL = '{ printf "\\n%s\\n" "$1" >&2; exit 1; }'

# A heap that ran out is a memory limit, whatever the exit status says.
_HEAP_EXHAUSTED = {
    "python": (b"MemoryError",),
    "node": (b"JavaScript heap out of memory", b"Reached heap limit"),
    "java": (b"java.lang.OutOfMemoryError",),
}


@dataclass(frozen=True)
class Runtime:
    language: str
    extension: str
    kind: Kind
    linter: Literal["ruff", "eslint", "checkstyle"]

    @property
    def family(self) -> Family:
        return "node" if self.kind == "esbuild" else self.kind

    @property
    def source_name(self) -> str:
        # Java's source launcher does not tie the class name to the file name.
        return "Main.java" if self.kind == "java" else "main" + self.extension

    @property
    def source_path(self) -> str:
        return f"{CODE_DIR}/{self.source_name}"

    def command(self, limits: SandboxLimits, marker: str) -> list[str]:
        """argv inside the sandbox; `marker` is printed if compilation fails."""
        src = self.source_path
        if self.kind == "python":
            return ["python3", "-B", src]
        node = f"node --max-old-space-size={limits.heap_mb(0.6)}"
        if self.kind == "node":
            # `node --check` first, so a syntax error is a compilation error (~40 ms).
            script = f"node --check {src} || {_FAIL}\nexec {node} {src}"
            return ["sh", "-c", script, "sh", marker]
        if self.kind == "java":
            return [
                "java",
                f"-Xmx{limits.heap_mb(0.5)}m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-XX:-UsePerfData",
                "-XX:ActiveProcessorCount=1",
                "-Xshare:auto",
                "-Djava.io.tmpdir=/tmp",
                src,
            ]
        out = f"{BUILD_DIR}/main.js"
        # From /code, so that esbuild's messages name "main.ts", not "../code/main.ts".
        script = (
            f"(cd {CODE_DIR} && NODE_PATH={TOOLS_MOUNT}/node_modules {TOOLS_MOUNT}/bin/esbuild"
            f" {self.source_name} --bundle --platform=node --format=cjs --jsx=automatic"
            f" --loader:{self.extension}={_ESBUILD_LOADER[self.extension]}"
            f" --define:process.env.NODE_ENV='\"production\"'"
            f" --tsconfig-raw='{_TSCONFIG_RAW}'"
            f" --log-level=error --color=false --outfile={out}) || {_FAIL}\n"
            f"exec {node} {out}"
        )
        return ["sh", "-c", script, "sh", marker]

    def compile_failed(self, exit_code: int | None, stderr: bytes, marker: str) -> bool:
        if exit_code != 1:
            return False
        last = _last_line(stderr)
        if self.kind in ("esbuild", "node"):
            return last == marker.encode()
        if self.kind == "java":
            return last == b"error: compilation failed"
        if self.kind == "python":
            # A SyntaxError raised while running has a traceback; one from compiling
            # the file itself has none.
            return b"Traceback (most recent call last):" not in stderr and last.startswith(
                (b"SyntaxError", b"IndentationError", b"TabError")
            )
        return False

    def heap_exhausted(self, stderr: bytes) -> bool:
        tail = stderr[-4096:]
        return any(sign in tail for sign in _HEAP_EXHAUSTED[self.family])


def strip_marker(stderr: bytes, marker: str) -> bytes:
    """Drop the compile-failure marker line from what the user sees."""
    token = b"\n" + marker.encode() + b"\n"
    return stderr.replace(token, b"\n").rstrip(b"\n") + b"\n" if token in stderr else stderr


def _last_line(data: bytes) -> bytes:
    lines = data.rstrip().splitlines()
    return lines[-1].strip() if lines else b""


LANGUAGES: dict[str, Runtime] = {
    r.language: r
    for r in (
        Runtime("python", ".py", "python", "ruff"),
        Runtime("javascript", ".js", "node", "eslint"),
        Runtime("typescript", ".ts", "esbuild", "eslint"),
        Runtime("java", ".java", "java", "checkstyle"),
        Runtime("react", ".jsx", "esbuild", "eslint"),
        Runtime("tailwind", ".jsx", "esbuild", "eslint"),
        Runtime("vite", ".js", "esbuild", "eslint"),
        Runtime("nestjs", ".ts", "esbuild", "eslint"),
    )
}
