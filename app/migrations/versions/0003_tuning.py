"""Tuning: served queries, retriever studies, generation trials and tuned defaults

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "served_queries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(length=32), nullable=True),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_served_queries_model", "served_queries", ["model"])
    op.create_table(
        "tuning_studies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("optuna_study", sa.String(length=200), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("trials_run", sa.Integer(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("recall_target", sa.Float(), nullable=False),
        sa.Column("corpus_size", sa.Integer(), nullable=False),
        sa.Column("eval_queries", sa.Integer(), nullable=False),
        sa.Column("eval_source", sa.String(length=16), nullable=False),
        sa.Column("params_before", sa.JSON(), nullable=True),
        sa.Column("best_params", sa.JSON(), nullable=True),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("config_id", sa.Integer(), nullable=True),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("finished_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tuning_studies_kind_started", "tuning_studies", ["kind", "started_at"])
    op.create_table(
        "generation_trials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("language", sa.String(length=32), nullable=False),
        sa.Column("optuna_study", sa.String(length=200), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("top_p", sa.Float(), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("served", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcomes", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("finished_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_generation_trials_language_status", "generation_trials", ["language", "status"]
    )
    op.create_table(
        "generation_defaults",
        sa.Column("language", sa.String(length=32), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("top_p", sa.Float(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("complete_trials", sa.Integer(), nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("language"),
    )


def downgrade() -> None:
    op.drop_table("generation_defaults")
    op.drop_index("ix_generation_trials_language_status", table_name="generation_trials")
    op.drop_table("generation_trials")
    op.drop_index("ix_tuning_studies_kind_started", table_name="tuning_studies")
    op.drop_table("tuning_studies")
    op.drop_index("ix_served_queries_model", table_name="served_queries")
    op.drop_table("served_queries")
