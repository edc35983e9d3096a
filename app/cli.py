"""The `codeloop` command: `up`, `keys`, `workspaces`, `migrate`, `model`, `knowledge`,
`dashboard`.

Kept free of torch at import time: `codeloop keys create` must be instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from app.core.config import get_settings
from app.remote import add_client_commands


def _cmd_up(args: argparse.Namespace) -> int:
    from app.embedded import run_embedded

    return run_embedded(api_port=args.port, flower_port=args.flower_port)


def _cmd_migrate(_args: argparse.Namespace) -> int:
    from app.core.db import migrate

    migrate()
    print(f"schema up to date at {get_settings().database_url}")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from app.core.auth import create_key, revoke_key
    from app.core.db import migrate, session_scope
    from app.core.errors import ApiError
    from app.core.models import ApiKey, Workspace
    from app.core.workspaces import workspace_named

    migrate()
    with session_scope() as session:
        if args.keys_cmd == "create":
            try:
                workspace = workspace_named(session, args.workspace)
            except ApiError as exc:
                hint = f"; create it with: codeloop workspaces create {args.workspace}"
                print(f"{exc.message}{hint if exc.status_code == 404 else ''}", file=sys.stderr)
                return 1
            row, secret = create_key(session, args.name, workspace=workspace.id)
            print(secret)
            print(f"created key {row.id} ({row.prefix}…) named {row.name!r} in workspace "
                  f"{workspace.name!r}; it is shown once", file=sys.stderr)  # fmt: skip
            return 0
        if args.keys_cmd == "list":
            rows = session.execute(
                select(ApiKey, Workspace.name)
                .outerjoin(Workspace, Workspace.id == ApiKey.workspace_id)
                .order_by(ApiKey.created_at)
            )
            for row, workspace_name in rows:
                state = "revoked" if row.revoked_at else "active"
                where = workspace_name or row.workspace_id
                print(f"{row.id}  {row.prefix}…  {state:8}  {where:20}  {row.name}")
            return 0
        if revoke_key(session, args.id):
            print(f"revoked {args.id}")
            return 0
        print(f"no active key {args.id}", file=sys.stderr)
        return 1


def _cmd_workspaces(args: argparse.Namespace) -> int:
    from app.core.db import migrate, session_scope
    from app.core.errors import ApiError
    from app.core.workspaces import create_workspace, list_workspaces

    migrate()
    with session_scope() as session:
        if args.workspaces_cmd == "create":
            try:
                row = create_workspace(session, args.name)
            except ApiError as exc:
                print(exc.message, file=sys.stderr)
                return 1
            print(f"created workspace {row.name!r} ({row.id}); add keys with: "
                  f"codeloop keys create --workspace {row.name}")  # fmt: skip
            return 0
        for workspace, keys in list_workspaces(session):
            print(f"{workspace.id}  {workspace.name:20}  {keys} active key(s)")
        return 0


def _cmd_model(_args: argparse.Namespace) -> int:
    """Resolve and load the configured model once (converts the bundled one ahead of time)."""
    from workers.tasks.generate import load_model_once

    loaded = load_model_once()
    print(json.dumps({"model": loaded.model_id, "device": loaded.device, "dtype": loaded.dtype}))
    return 0


def _cmd_knowledge(_args: argparse.Namespace) -> int:
    from app.core.db import migrate, session_scope
    from app.core.memory import load_starter_knowledge

    migrate()
    with session_scope() as session:
        added = load_starter_knowledge(session)
    print(f"starter knowledge: {added} snippets added")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the tuners' own storage (PostgreSQL schema or journal)."""
    from workers.tuning.storage import describe, optuna_storage

    try:
        import optuna_dashboard
    except ImportError:
        print("optuna-dashboard is not installed: pip install optuna-dashboard", file=sys.stderr)
        return 1
    settings = get_settings()
    print(f"optuna-dashboard on http://{args.host}:{args.port} reading {describe(settings)}",
          flush=True)  # fmt: skip
    optuna_dashboard.run_server(optuna_storage(settings), host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codeloop", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="run everything on this machine (embedded Redis, SQLite)")
    up.add_argument("--port", type=int, default=None, help="API port (default 8000)")
    up.add_argument("--flower-port", type=int, default=5555)
    up.set_defaults(func=_cmd_up)

    sub.add_parser("migrate", help="create or upgrade the SQL schema").set_defaults(
        func=_cmd_migrate
    )

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", default="default")
    create.add_argument(
        "--workspace", default="default",
        help="the workspace whose memory the key shares (must exist; default: default)",
    )  # fmt: skip
    keys_sub.add_parser("list", help="list keys and their workspaces (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    keys.set_defaults(func=_cmd_keys)

    workspaces = sub.add_parser("workspaces", help="manage workspaces (who shares memory)")
    workspaces_sub = workspaces.add_subparsers(dest="workspaces_cmd", required=True)
    workspaces_sub.add_parser("create", help="create a workspace").add_argument("name")
    workspaces_sub.add_parser("list", help="list workspaces and their active keys")
    workspaces.set_defaults(func=_cmd_workspaces)

    sub.add_parser("model", help="load the configured model once (prepares the bundled one)")\
        .set_defaults(func=_cmd_model)  # fmt: skip
    sub.add_parser("knowledge", help="load the starter knowledge base (idempotent)")\
        .set_defaults(func=_cmd_knowledge)  # fmt: skip
    dashboard = sub.add_parser("dashboard", help="optuna-dashboard on the tuning studies")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.set_defaults(func=_cmd_dashboard)
    add_client_commands(sub)  # generate, exec, feedback, jobs, optimize: app/remote.py
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(Path.cwd()))
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
