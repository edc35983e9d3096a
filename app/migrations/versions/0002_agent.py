"""The agent: job lineage, generation context/rounds/verification, tool-call origin

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("generation_id", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_parent_id"), ["parent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_generation_id"), ["generation_id"], unique=False)
    with op.batch_alter_table("code_history", schema=None) as batch_op:
        batch_op.add_column(sa.Column("context", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("rounds", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("verification_status", sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), nullable=False, server_default="model")
        )
    with op.batch_alter_table("function_calls", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("origin", sa.String(length=16), nullable=False, server_default="model")
        )
        batch_op.create_index(
            batch_op.f("ix_function_calls_generation_id"), ["generation_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("function_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_function_calls_generation_id"))
        batch_op.drop_column("origin")
    with op.batch_alter_table("code_history", schema=None) as batch_op:
        batch_op.drop_column("source")
        batch_op.drop_column("verification_status")
        batch_op.drop_column("rounds")
        batch_op.drop_column("context")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_generation_id"))
        batch_op.drop_index(batch_op.f("ix_jobs_parent_id"))
        batch_op.drop_column("generation_id")
        batch_op.drop_column("parent_id")
