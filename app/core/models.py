"""SQL tables: the source of truth for jobs, generations, feedback, knowledge, embeddings.

Redis holds only what can be lost and rebuilt (queues, live events, leases); everything a
user would miss lives here. Schema changes go through Alembic (`app/migrations`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Id and name of the workspace that env keys, the anonymous caller and every key created
# without `--workspace` belong to (app/core/workspaces.py).
DEFAULT_WORKSPACE = "default"
# Knowledge rows with this workspace are global: the starter snippets every workspace sees.
_GLOBAL_ROW = text("workspace_id IS NULL")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A stored time, timezone-aware: SQLite hands back naive ones, and all we store is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Job(Base):
    """One unit of accepted work. Written before its Celery message is sent."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
        Index("ix_jobs_status_queue", "status", "queue"),
        Index("ix_jobs_owner_status", "owner", "status"),  # quotas: a key's open jobs
        Index("ix_jobs_queue_created", "queue", "created_at"),  # reconciler: did a queue move
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    owner: Mapped[str] = mapped_column(String(64))
    # The owner's workspace when the job was made: the memory its worker may read and write.
    workspace_id: Mapped[str] = mapped_column(String(36), default=DEFAULT_WORKSPACE)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    dispatches: Mapped[int] = mapped_column(Integer, default=0)
    # When its message was last sent: how long a waiting job has waited for it.
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    progress_tokens: Mapped[int] = mapped_column(Integer, default=0)
    # A job started by another job (the agent's execute/lint calls) names its parent.
    parent_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    # Executions of a generation's code (POST /execute_code with generation_id, or the
    # agent's verification) name it, so GET /generations/{id} lists them.
    generation_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    # The request's `callback_url` and how its delivery went (app/core/webhooks.py):
    # status pending → delivered | failed; `webhook_next_at` is when the next attempt
    # may start (also how long a claimed attempt is held before another may take over).
    callback_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    webhook_status: Mapped[str | None] = mapped_column(String(16), default=None, index=True)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    webhook_last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    webhook_last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    webhook_delivered_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), default=None
    )


class CodeHistory(Base):
    """Every generation: what was asked, what came back, how users rated it."""

    __tablename__ = "code_history"
    __table_args__ = (
        Index("ix_code_history_language_score", "language", "feedback_score"),
        Index("ix_code_history_workspace_language", "workspace_id", "language"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), default=None, index=True)
    owner: Mapped[str] = mapped_column(String(64), default="anonymous")
    workspace_id: Mapped[str] = mapped_column(String(36), default=DEFAULT_WORKSPACE)
    project_id: Mapped[str | None] = mapped_column(String(200), default=None)
    task: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text, default="")
    code: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(String(300), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    finish_reason: Mapped[str | None] = mapped_column(String(16), default=None)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    feedback_score: Mapped[float | None] = mapped_column(Float, default=None)
    feedback_count: Mapped[int] = mapped_column(Integer, default=0)
    usage_count: Mapped[int] = mapped_column(Integer, default=0)
    last_execution_status: Mapped[str | None] = mapped_column(String(32), default=None)
    # What the agent did: the context items the model was shown, each verify-and-repair
    # round, how verification ended, and whether the code came from the model or memory.
    context: Mapped[list[Any]] = mapped_column(JSON, default=list)
    rounds: Mapped[list[Any]] = mapped_column(JSON, default=list)
    verification_status: Mapped[str | None] = mapped_column(String(16), default=None)
    source: Mapped[str] = mapped_column(String(16), default="model")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class KnowledgeItem(Base):
    """A curated snippet the model may be shown.

    `workspace_id` NULL: global (the starter snippets, seen by every workspace); otherwise
    written by a key of that workspace and seen only there. A title is unique per
    language within its workspace, and among the global rows (a partial index).
    """

    __tablename__ = "knowledge_base"
    __table_args__ = (
        UniqueConstraint(
            "workspace_id", "language", "title", name="uq_knowledge_workspace_language_title"
        ),
        Index(
            "uq_knowledge_global_language_title",
            "language",
            "title",
            unique=True,
            sqlite_where=_GLOBAL_ROW,
            postgresql_where=_GLOBAL_ROW,
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str | None] = mapped_column(String(36), default=None)
    language: Mapped[str] = mapped_column(String(32), index=True)
    title: Mapped[str] = mapped_column(String(300))
    content: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(String(64), default="user")
    feedback_score: Mapped[float | None] = mapped_column(Float, default=None)
    feedback_count: Mapped[int] = mapped_column(Integer, default=0)
    usage_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProjectFile(Base):
    """A file uploaded as context for one project of a workspace (`owner`: who created it).

    `revision` counts writes (1 when created), so one upsert tells created from replaced.
    """

    __tablename__ = "project_context"
    __table_args__ = (
        UniqueConstraint(
            "workspace_id", "project_id", "path", name="uq_project_context_workspace_path"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64), default="anonymous")
    workspace_id: Mapped[str] = mapped_column(String(36), default=DEFAULT_WORKSPACE)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    project_id: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(String(1000))
    content: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class FeedbackLog(Base):
    """One key's rating of a generation: a new rating by the same key replaces it."""

    __tablename__ = "feedback_log"
    __table_args__ = (
        UniqueConstraint("generation_id", "owner", name="uq_feedback_log_generation_owner"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    generation_id: Mapped[str] = mapped_column(ForeignKey("code_history.id"), index=True)
    owner: Mapped[str] = mapped_column(String(64), default="anonymous")
    score: Mapped[float] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FunctionCall(Base):
    """Audit of every tool call: the model's own (`origin="model"`) and the agent's
    verification runs (`origin="agent"`). `result` holds a capped summary."""

    __tablename__ = "function_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), default=None, index=True)
    generation_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    call_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ok: Mapped[bool] = mapped_column(Boolean, default=False)
    origin: Mapped[str] = mapped_column(String(16), default="model")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Workspace(Base):
    """Who shares memory: every key belongs to one (`default` unless an operator says)."""

    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """An API key, stored as its SHA-256 (keys are 32 random bytes, so no slow hash)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id"), default=DEFAULT_WORKSPACE, index=True
    )
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Embedding(Base):
    """An item's embedding; SQL is the source of truth, any vector index is a cache.

    `seq` is the high-water mark an index replica catches up from.
    """

    __tablename__ = "embeddings"
    __table_args__ = (
        UniqueConstraint("item_type", "item_id", "model", name="uq_embeddings_item_model"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_type: Mapped[str] = mapped_column(String(16))  # "generation" | "knowledge"
    item_id: Mapped[str] = mapped_column(String(36))
    language: Mapped[str] = mapped_column(String(32), index=True)
    # The item's workspace (NULL: global), copied at embedding time so an index replica
    # can filter a search by workspace without asking SQL; items never change workspace.
    workspace_id: Mapped[str | None] = mapped_column(String(36), default=None)
    model: Mapped[str] = mapped_column(String(200))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RetrieverConfig(Base):
    """HNSW parameters found by the tuner; the newest active row wins."""

    __tablename__ = "retriever_configs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ServedQuery(Base):
    """The embedding of a query the retriever answered: the tuner's evaluation set.

    Kept capped (`TUNE_EVAL_QUERIES` x 2, oldest dropped) by the replica that records them.
    """

    __tablename__ = "served_queries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    dim: Mapped[int] = mapped_column(Integer)
    language: Mapped[str | None] = mapped_column(String(32), default=None)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, unit length
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TuningStudy(Base):
    """One retriever tuning run: what it measured and whether it promoted a config.

    `config_id` names the `retriever_configs` row it promoted (None when it kept the
    configuration in force); Optuna's own record of the trials is `optuna_study`.
    """

    __tablename__ = "tuning_studies"
    __table_args__ = (Index("ix_tuning_studies_kind_started", "kind", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), default="retriever")
    optuna_study: Mapped[str] = mapped_column(String(200), default="")
    trigger: Mapped[str] = mapped_column(String(16), default="api")  # api | beat
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|finished|failed
    n_trials: Mapped[int] = mapped_column(Integer, default=0)
    trials_run: Mapped[int] = mapped_column(Integer, default=0)
    timeout_s: Mapped[float] = mapped_column(Float, default=0.0)
    recall_target: Mapped[float] = mapped_column(Float, default=0.98)
    corpus_size: Mapped[int] = mapped_column(Integer, default=0)
    eval_queries: Mapped[int] = mapped_column(Integer, default=0)
    eval_source: Mapped[str] = mapped_column(String(16), default="")  # served|items|mixed
    params_before: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    best_params: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    config_id: Mapped[int | None] = mapped_column(Integer, default=None)
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class GenerationTrial(Base):
    """An Optuna trial of a language's generation study, served to `budget` generations.

    Generate workers claim a serving with one conditional UPDATE (no Optuna there); the
    maintenance teller reads the outcomes of the generations tagged with `id` and tells
    Optuna. status: open (still served) → waiting (budget spent) → complete | failed.
    """

    __tablename__ = "generation_trials"
    __table_args__ = (Index("ix_generation_trials_language_status", "language", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    language: Mapped[str] = mapped_column(String(32))
    optuna_study: Mapped[str] = mapped_column(String(200))
    trial_number: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float] = mapped_column(Float)
    top_p: Mapped[float] = mapped_column(Float)
    budget: Mapped[int] = mapped_column(Integer)
    served: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="open")
    outcomes: Mapped[int] = mapped_column(Integer, default=0)
    value: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class GenerationDefault(Base):
    """A language's tuned sampling defaults (the best complete trial of its study)."""

    __tablename__ = "generation_defaults"

    language: Mapped[str] = mapped_column(String(32), primary_key=True)
    temperature: Mapped[float] = mapped_column(Float)
    top_p: Mapped[float] = mapped_column(Float)
    trial_id: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    complete_trials: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
