"""Linters run in the sandbox of each backend and report in one issue shape."""

from __future__ import annotations

import pytest

from tests.workers.sandbox.support import run
from workers.sandbox import service

PYTHON = "import os, sys\ndef f( x ):\n  y=1\n  return undefined_name\n"
JAVASCRIPT = "const unused = 1;\nconsole.log(notDefined);\n"
TYPESCRIPT = "let count: number = 1;\nconst label: string = 'x';\n"
JSX = (
    "import React from 'react';\nconst Card = () => <div />;\nconst Unused = 2;\n"
    "export const App = () => <Card />;\n"
)
JAVA = (
    "import java.util.*;\nimport java.io.File;\n"
    "public class Main {\n  public static void main(String[] args) {\n"
    '    String s = args.length > 0 ? args[0] : "a";\n'
    '    if (s == "a") System.out.println("hi");\n  }\n}\n'
)


def codes(result: dict) -> set[str]:
    return {issue["code"] for issue in result["issues"]}


def test_python_uses_flake8_codes(backend: str):
    result = service.lint({"language": "python", "code": PYTHON})
    assert result["linter"].startswith("ruff")
    assert {"E401", "F401", "E302", "E201", "E111", "E225", "F841", "F821"} <= codes(result)
    undefined = next(i for i in result["issues"] if i["code"] == "F821")
    assert undefined == {"line": 4, "column": 10, "code": "F821", "severity": "error",
                         "message": "Undefined name `undefined_name`"}  # fmt: skip
    assert next(i for i in result["issues"] if i["code"] == "E401")["severity"] == "warning"


def test_python_syntax_error_is_e999(backend: str):
    result = service.lint({"language": "python", "code": "def f(:\n"})
    assert "E999" in codes(result)


def test_eslint_flat_config(backend: str):
    js = service.lint({"language": "javascript", "code": JAVASCRIPT})
    assert {"no-unused-vars", "no-undef"} <= codes(js)
    assert all(i["severity"] == "error" for i in js["issues"])
    ts = service.lint({"language": "typescript", "code": TYPESCRIPT})
    assert {"prefer-const", "@typescript-eslint/no-unused-vars"} <= codes(ts)
    jsx = service.lint({"language": "react", "code": JSX})
    unused = [i["message"] for i in jsx["issues"] if i["code"] == "no-unused-vars"]
    assert unused == ["'Unused' is assigned a value but never used."]  # Card, React: used
    broken = service.lint({"language": "vite", "code": "const x = ;"})
    assert codes(broken) == {"parse-error"}


def test_checkstyle_report_is_parsed(backend: str):
    result = service.lint({"language": "java", "code": JAVA})
    found = {i["code"]: i for i in result["issues"]}
    assert {"AvoidStarImport", "UnusedImports", "NeedBraces"} <= set(found)
    assert found["StringLiteralEquality"]["severity"] == "error"
    assert found["StringLiteralEquality"]["line"] == 6


@pytest.mark.parametrize("language", ["python", "react", "java"])
def test_execute_with_lint_returns_both(process_backend: str, language: str):
    code = {"python": "import os\nprint('hi')", "react": "const a = 1;\nconsole.log('hi');",
            "java": JAVA}[language]  # fmt: skip
    result = run(language, code, lint=True)
    assert result["status"] == "ok" and result["stdout"] == "hi\n"
    assert isinstance(result["lint"], list) and result["lint"]
    assert set(result["lint"][0]) == {"line", "column", "code", "message", "severity"}


def test_unknown_language_is_a_lint_error(process_backend: str):
    with pytest.raises(service.LintError):
        service.lint({"language": "cobol", "code": "x"})
