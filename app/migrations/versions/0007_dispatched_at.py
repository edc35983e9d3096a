"""Redispatch: when a job's message was last sent, and an index to see a queue move

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        # The reconciler asks "has a job of this queue made after X started?" each pass.
        batch_op.create_index("ix_jobs_queue_created", ["queue", "created_at"], unique=False)
    # Waiting jobs were sent when they were last written (dispatch was their last write).
    op.execute(
        "UPDATE jobs SET dispatched_at = updated_at"
        " WHERE status IN ('queued', 'retrying') AND dispatches > 0"
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_queue_created")
        batch_op.drop_column("dispatched_at")
