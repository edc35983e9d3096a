"""Workspaces: every key belongs to one; memory is shared inside it

A `workspaces` table with the `default` row; `api_keys`, `jobs`, `code_history`,
`project_context` and `embeddings` get a `workspace_id`, and every existing row goes to
`default`. Knowledge rows get one too: the starter snippets stay global (NULL), anything
else goes to `default`. A project's file is unique per workspace, project and path; a
rating per generation and key (older duplicate ratings are dropped, keeping each key's
newest, and the generations' running scores recomputed from what is left).

Downgrade refuses while a workspace other than `default` exists: it would merge their
memory (and project files with the same path would collide).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT = "default"
GLOBAL_ROW = "workspace_id IS NULL"


def _workspace_column(nullable: bool = False) -> sa.Column[str]:
    if nullable:
        return sa.Column("workspace_id", sa.String(length=36), nullable=True)
    return sa.Column("workspace_id", sa.String(length=36), nullable=False, server_default=DEFAULT)


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", name="uq_workspaces_name"),
    )
    op.execute(
        sa.text("INSERT INTO workspaces (id, name, created_at) VALUES (:ws, :ws, :at)").bindparams(
            sa.bindparam("at", datetime.now(UTC), type_=sa.DateTime(timezone=True)), ws=DEFAULT
        )
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(_workspace_column())
        batch_op.create_index(batch_op.f("ix_api_keys_workspace_id"), ["workspace_id"])
        batch_op.create_foreign_key(
            "fk_api_keys_workspace_id", "workspaces", ["workspace_id"], ["id"]
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(_workspace_column())
    with op.batch_alter_table("code_history", schema=None) as batch_op:
        batch_op.add_column(_workspace_column())
        batch_op.create_index("ix_code_history_workspace_language", ["workspace_id", "language"])
    with op.batch_alter_table("project_context", schema=None) as batch_op:
        batch_op.add_column(_workspace_column())
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
        batch_op.drop_constraint("uq_project_context_path", type_="unique")
        batch_op.create_unique_constraint(
            "uq_project_context_workspace_path", ["workspace_id", "project_id", "path"]
        )
    with op.batch_alter_table("knowledge_base", schema=None) as batch_op:
        batch_op.add_column(_workspace_column(nullable=True))
        batch_op.drop_constraint("uq_knowledge_language_title", type_="unique")
        batch_op.create_unique_constraint(
            "uq_knowledge_workspace_language_title", ["workspace_id", "language", "title"]
        )
    starter_stays_global = "UPDATE knowledge_base SET workspace_id = :ws WHERE source <> 'starter'"
    op.execute(sa.text(starter_stays_global).bindparams(ws=DEFAULT))
    op.create_index(
        "uq_knowledge_global_language_title",
        "knowledge_base",
        ["language", "title"],
        unique=True,
        sqlite_where=sa.text(GLOBAL_ROW),
        postgresql_where=sa.text(GLOBAL_ROW),
    )
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.add_column(_workspace_column(nullable=True))
    for item_type, table in (("generation", "code_history"), ("knowledge", "knowledge_base")):
        op.execute(
            sa.text(
                f"UPDATE embeddings SET workspace_id = (SELECT t.workspace_id FROM {table} t "
                "WHERE t.id = embeddings.item_id) WHERE item_type = :item_type"
            ).bindparams(item_type=item_type)
        )
    # One rating per key: keep each key's newest, then recompute the running scores.
    op.execute(
        "DELETE FROM feedback_log WHERE id NOT IN "
        "(SELECT MAX(id) FROM feedback_log GROUP BY generation_id, owner)"
    )
    op.execute(
        "UPDATE code_history SET "
        "feedback_count = (SELECT COUNT(*) FROM feedback_log f "
        "WHERE f.generation_id = code_history.id), "
        "feedback_score = (SELECT AVG(f.score) FROM feedback_log f "
        "WHERE f.generation_id = code_history.id) "
        "WHERE id IN (SELECT generation_id FROM feedback_log)"
    )
    with op.batch_alter_table("feedback_log", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            "uq_feedback_log_generation_owner", ["generation_id", "owner"]
        )


def downgrade() -> None:
    bind = op.get_bind()
    others = bind.execute(
        sa.text("SELECT COUNT(*) FROM workspaces WHERE id <> :ws").bindparams(ws=DEFAULT)
    ).scalar()
    if others:
        raise RuntimeError(
            f"{others} workspace(s) besides {DEFAULT!r} exist; downgrading would merge "
            "their memory. Delete them (and their keys) first."
        )
    with op.batch_alter_table("feedback_log", schema=None) as batch_op:
        batch_op.drop_constraint("uq_feedback_log_generation_owner", type_="unique")
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.drop_column("workspace_id")
    op.drop_index("uq_knowledge_global_language_title", table_name="knowledge_base")
    with op.batch_alter_table("knowledge_base", schema=None) as batch_op:
        batch_op.drop_constraint("uq_knowledge_workspace_language_title", type_="unique")
        batch_op.create_unique_constraint("uq_knowledge_language_title", ["language", "title"])
        batch_op.drop_column("workspace_id")
    with op.batch_alter_table("project_context", schema=None) as batch_op:
        batch_op.drop_constraint("uq_project_context_workspace_path", type_="unique")
        batch_op.create_unique_constraint("uq_project_context_path", ["project_id", "path"])
        batch_op.drop_column("revision")
        batch_op.drop_column("workspace_id")
    # Plain DROP COLUMN (SQLite >= 3.35), not a batch copy: a copy drops the table, which
    # SQLite's foreign keys refuse while feedback_log / code_history rows point at it.
    op.drop_index("ix_code_history_workspace_language", table_name="code_history")
    op.drop_column("code_history", "workspace_id")
    op.drop_column("jobs", "workspace_id")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_constraint("fk_api_keys_workspace_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_api_keys_workspace_id"))
        batch_op.drop_column("workspace_id")
    op.drop_table("workspaces")
