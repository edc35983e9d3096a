"""Linters, run inside the sandbox like any program, and their reports in one shape.

Linters only parse, but they parse hostile input with large parsers, and ESLint and
Checkstyle would happily read a file the snippet names; so they run in the active
backend's sandbox with the same isolation and limits as an execution. Every issue
becomes `{"line", "column", "code", "message", "severity"}` (1-based line and column).

- Python: ruff, with flake8's default rule set (pycodestyle E/W + pyflakes F, line
  length 79, E226 ignored as flake8 does) under flake8's codes. Ruff rather than flake8:
  ~15 ms against ~230 ms for the same codes, one static binary the sandbox can bind,
  and no plugins to load. `--preview` turns on pycodestyle's whitespace and blank-line
  rules (E1/E2/E3), which ruff still ships as preview. A syntax error is E999 as in
  flake8. flake8 has no severities: E9/F63/F7/F82 (the set flake8's own docs run as
  "errors that stop the build") are "error", the rest "warning".
- JavaScript family: ESLint 9 with workers/sandbox/node/eslint.config.mjs (and
  eslint.ts.config.mjs, which adds typescript-eslint, for .ts).
- Java: Checkstyle with workers/sandbox/java/checkstyle.xml; its XML report is parsed
  (the exit code is a count of errors mod 256, not a status).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from workers.sandbox.backend import SandboxRun
from workers.sandbox.limits import SandboxLimits
from workers.sandbox.result import RunOutcome
from workers.sandbox.runtimes import (
    CHECKSTYLE_JARS,
    CODE_DIR,
    ESLINT_CONFIG,
    ESLINT_JS,
    ESLINT_TS_CONFIG,
    RUFF_BIN,
    TOOLS_MOUNT,
    Runtime,
)

CHECKSTYLE_CONFIG = Path(__file__).with_name("java") / "checkstyle.xml"
_FLAKE8_ERRORS = re.compile(r"^(E9|F63|F7|F82)")
_CHECKSTYLE_PARSE = re.compile(r"Main\.java:(\d+):(\d+):\s*(.+)")

Issue = dict[str, Any]


class LintError(RuntimeError):
    """The linter itself could not run or produce a report."""


@dataclass(frozen=True)
class LintJob:
    run: SandboxRun
    linter: str


def find_ruff() -> str | None:
    """The ruff binary of this Python environment (the execute extra installs it)."""
    try:
        from ruff.__main__ import find_ruff_bin

        return str(find_ruff_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("ruff")


def build(runtime: Runtime, code: str, limits: SandboxLimits) -> LintJob:
    source = code.encode("utf-8", "replace")
    if runtime.linter == "ruff":
        ruff = find_ruff()
        binds = ((ruff, RUFF_BIN),) if ruff else ()
        argv = [
            RUFF_BIN,
            "check",
            "--isolated",
            "--no-cache",
            "--preview",
            "--quiet",
            "--select",
            "E,W,F",
            "--ignore",
            "E226",
            "--line-length",
            "79",
            "--output-format",
            "json",
            "--stdin-filename",
            "main.py",
            "-",
        ]
        run = SandboxRun("python", argv, {}, source, limits, binds=binds)
        return LintJob(run, "ruff (flake8 rule codes)")
    if runtime.linter == "eslint":
        # ESLint ignores a --stdin-filename outside the config file's directory.
        name = f"{TOOLS_MOUNT}/snippet/main{runtime.extension}"
        config = ESLINT_TS_CONFIG if runtime.extension in (".ts", ".tsx") else ESLINT_CONFIG
        argv = [
            "node",
            f"--max-old-space-size={limits.heap_mb(0.6)}",
            ESLINT_JS,
            "--config",
            config,
            "--no-warn-ignored",
            "--format",
            "json",
            "--stdin",
            "--stdin-filename",
            name,
        ]
        return LintJob(SandboxRun("node", argv, {}, source, limits, cwd=TOOLS_MOUNT), "eslint 9")
    source_path = f"{CODE_DIR}/Main.java"
    config_path = f"{CODE_DIR}/checkstyle.xml"
    argv = [
        "java",
        f"-Xmx{limits.heap_mb(0.5)}m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-XX:-UsePerfData",
        "-Xshare:auto",
        "-cp",
        ":".join(CHECKSTYLE_JARS),
        "com.puppycrawl.tools.checkstyle.Main",
        "-c",
        config_path,
        "-f",
        "xml",
        source_path,
    ]
    files = {source_path: source, config_path: CHECKSTYLE_CONFIG.read_bytes()}
    return LintJob(SandboxRun("java", argv, files, b"", limits), "checkstyle")


def parse(runtime: Runtime, outcome: RunOutcome) -> list[Issue]:
    if outcome.error:
        raise LintError(outcome.error)
    if outcome.timed_out or outcome.oom_killed or outcome.output_exceeded:
        raise LintError("the linter ran out of time, memory or output space")
    try:
        if runtime.linter == "ruff":
            issues = _ruff(outcome)
        elif runtime.linter == "eslint":
            issues = _eslint(outcome)
        else:
            issues = _checkstyle(outcome)
    except (ValueError, KeyError, TypeError, ElementTree.ParseError) as exc:
        tail = outcome.stderr.decode("utf-8", "replace")[-500:]
        raise LintError(f"unreadable {runtime.linter} report ({exc}): {tail}") from exc
    return sorted(issues, key=lambda i: (i["line"], i["column"], i["code"]))


def _issue(line: Any, column: Any, code: str, message: str, severity: str) -> Issue:
    return {
        "line": int(line or 1),
        "column": int(column or 1),
        "code": code,
        "message": message,
        "severity": severity,
    }


def _ruff(outcome: RunOutcome) -> list[Issue]:
    if outcome.exit_code not in (0, 1):
        raise ValueError(f"ruff exited {outcome.exit_code}")
    issues = []
    for d in json.loads(outcome.stdout or b"[]"):
        code = d.get("code") or "E999"  # ruff reports syntax errors without a code
        severity = "error" if _FLAKE8_ERRORS.match(code) else "warning"
        loc = d.get("location") or {}
        issues.append(_issue(loc.get("row"), loc.get("column"), code, d["message"], severity))
    return issues


def _eslint(outcome: RunOutcome) -> list[Issue]:
    if outcome.exit_code not in (0, 1):
        raise ValueError(f"eslint exited {outcome.exit_code}")
    issues = []
    for report in json.loads(outcome.stdout):
        for m in report["messages"]:
            code = m.get("ruleId") or ("parse-error" if m.get("fatal") else "eslint")
            severity = "error" if m.get("severity") == 2 else "warning"
            issues.append(_issue(m.get("line"), m.get("column"), code, m["message"], severity))
    return issues


def _checkstyle(outcome: RunOutcome) -> list[Issue]:
    stderr = outcome.stderr.decode("utf-8", "replace")
    if "CheckstyleException" in stderr:
        # A file Checkstyle's grammar cannot parse (a syntax error, or Java newer than
        # this Checkstyle knows) aborts the run; report where it stopped.
        found = _CHECKSTYLE_PARSE.findall(stderr)
        if not found:
            raise ValueError("checkstyle failed")
        line, column, message = found[-1]
        return [_issue(line, column, "ParseError", f"checkstyle cannot parse: {message}", "error")]
    root = ElementTree.fromstring(outcome.stdout)
    issues = []
    for e in root.iter("error"):
        source = e.get("source", "").rsplit(".", 1)[-1]
        code = source[: -len("Check")] if source.endswith("Check") else source
        severity = "error" if e.get("severity") == "error" else "warning"
        issues.append(_issue(e.get("line"), e.get("column"), code, e.get("message", ""), severity))
    return issues
