"""Sandboxed execution and linting for the execute worker (SPEC §8, §11).

Entry points are in `workers.sandbox.service`: `execute`, `lint`, `backend_status`,
`LANGUAGES`. Two backends implement `backend.SandboxBackend`: `docker_backend` (a
throw-away container per run) and `process_backend` (bubblewrap as a per-run uid, with
seccomp and cgroups) for hosts without Docker. Nothing here imports torch or fastapi.
"""
