"""Every language of SPEC §8 on both backends: hello world, stdin, a compilation error
and a runtime error, each reported with the right status."""

from __future__ import annotations

import pytest

from tests.workers.sandbox.support import run

HELLO = {
    "python": "import sys\nprint('hello', sys.stdin.read().strip())",
    "javascript": (
        "const fs = require('fs');\nconsole.log('hello', fs.readFileSync(0, 'utf8').trim());"
    ),
    "typescript": (
        "import { readFileSync } from 'fs';\n"
        "const name: string = readFileSync(0, 'utf8').trim();\nconsole.log('hello', name);"
    ),
    "java": (
        "import java.util.Scanner;\n"
        "public class Hello {\n"
        "  public static void main(String[] args) {\n"
        '    System.out.println("hello " + new Scanner(System.in).nextLine().trim());\n'
        "  }\n}\n"
    ),
    "react": (
        "import { readFileSync } from 'fs';\n"
        "import { renderToStaticMarkup } from 'react-dom/server';\n"
        "function Hello({ name }) { return <p>hello {name}</p>; }\n"
        "console.log(renderToStaticMarkup(<Hello name={readFileSync(0, 'utf8').trim()} />));"
    ),
    "tailwind": (
        "import React from 'react';\nimport { readFileSync } from 'fs';\n"
        "import { renderToStaticMarkup } from 'react-dom/server';\n"
        "const name = readFileSync(0, 'utf8').trim();\n"
        'console.log(renderToStaticMarkup(<div className="p-4 text-xl">hello {name}</div>));'
    ),
    "vite": (
        "import { readFileSync } from 'node:fs';\n"
        "export const greet = (n) => `hello ${n}`;\n"
        "console.log(greet(readFileSync(0, 'utf8').trim()));"
    ),
    "nestjs": (
        "import { readFileSync } from 'fs';\n"
        "function Injectable(): ClassDecorator { return () => undefined; }\n"
        "@Injectable()\nclass GreetingService {\n"
        "  greet(name: string): string { return `hello ${name}`; }\n}\n"
        "console.log(new GreetingService().greet(readFileSync(0, 'utf8').trim()));"
    ),
}
EXPECTED = {
    "react": "<p>hello world</p>\n",
    "tailwind": '<div class="p-4 text-xl">hello world</div>\n',
}
COMPILE_ERROR = {
    "python": "def broken(:\n    pass\n",
    "javascript": "const x = ;\n",
    "typescript": "let x: = 1;\n",
    "java": 'public class Main { public static void main(String[] a) { int x = "s"; } }',
    "react": "const App = () => <div>;\n",
    "tailwind": "export default () => <div className='p-4'></span>;\n",
    "vite": "import x from './missing-module.js';\nconsole.log(x);\n",
    "nestjs": "class A { constructor(private readonly x: number { } }\n",
}
RUNTIME_ERROR = {
    "python": "raise ValueError('boom')",
    "javascript": "throw new Error('boom');",
    "typescript": "const f = (): never => { throw new Error('boom'); };\nf();",
    "java": (
        "public class Main {\n  public static void main(String[] a) {\n"
        '    throw new IllegalStateException("boom");\n  }\n}\n'
    ),
    "react": "const App = () => { throw new Error('boom'); };\nApp();",
    "tailwind": (
        "import { renderToString } from 'react-dom/server';\n"
        "const C = () => { throw new Error('boom'); };\nrenderToString(<C />);"
    ),
    "vite": "process.exitCode = 3; throw new Error('boom');",
    "nestjs": "class S { run(): void { throw new Error('boom'); } }\nnew S().run();",
}


@pytest.mark.parametrize("language", sorted(HELLO))
def test_hello_world_reads_stdin(backend: str, language: str):
    result = run(language, HELLO[language], stdin="world\n")
    assert result["status"] == "ok", result
    assert result["stdout"] == EXPECTED.get(language, "hello world\n")
    assert (result["exit_code"], result["signal"], result["backend"]) == (0, None, backend)
    assert result["truncated"] is False and result["lint"] is None
    assert result["duration_ms"] > 0


@pytest.mark.parametrize("language", sorted(COMPILE_ERROR))
def test_compilation_error(backend: str, language: str):
    result = run(language, COMPILE_ERROR[language])
    assert result["status"] == "compilation_error", result
    assert result["stdout"] == ""
    assert "codeloop-compile-failed" not in result["stderr"]  # the marker is ours only
    assert result["stderr"].strip()


@pytest.mark.parametrize("language", sorted(RUNTIME_ERROR))
def test_runtime_error(backend: str, language: str):
    result = run(language, RUNTIME_ERROR[language])
    assert result["status"] == "runtime_error", result
    assert result["exit_code"] not in (0, None) and result["signal"] is None
    assert "boom" in result["stderr"]


def test_exit_code_and_signal_are_reported(backend: str):
    exited = run("python", "import sys\nsys.exit(7)")
    assert (exited["status"], exited["exit_code"], exited["signal"]) == ("runtime_error", 7, None)
    # Regression: in Docker the program once ran as PID 1, which ignores such signals.
    killed = run("python", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert (killed["status"], killed["signal"]) == ("runtime_error", "SIGSEGV")


def test_a_program_cannot_fake_a_compilation_error(backend: str):
    # Whatever it prints, a program that ran was not a compilation error.
    code = "console.error('error: compilation failed'); process.exit(1);"
    assert run("typescript", code)["status"] == "runtime_error"
    java = ('public class Main { public static void main(String[] a) {'
            ' System.err.println("x"); System.exit(2); } }')  # fmt: skip
    assert run("java", java)["status"] == "runtime_error"
