"""Settings shared by every codeloop process.

One `Settings` class, read from `CODELOOP_*` environment variables (and an optional
`.env`). Every field is documented in README.md; keep the two in step.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core import secret_policy

DEFAULT_GPU_MODEL = "deepseek-ai/deepseek-coder-6.7b-instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CODELOOP_",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        protected_namespaces=(),
    )

    # --- infrastructure -------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite:///./data/codeloop.db"
    data_dir: Path = Path("./data")
    auto_migrate: bool = True

    # --- API ------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # auto: on when the API listens beyond loopback or any key exists (env or SQL).
    auth: Literal["auto", "on", "off"] = "auto"
    # Comma-separated plaintext keys accepted besides those in SQL (for operators).
    api_keys: str = ""
    max_request_bytes: int = 1_048_576
    max_task_chars: int = 20_000
    # Quotas (app/api/quotas.py); 0 turns a limit off. Per API key (the anonymous caller
    # counts as one key when auth is off).
    quota_requests_per_minute: int = 6000
    # Queued, retrying and running jobs of one key (was MAX_QUEUED_JOBS_PER_OWNER).
    quota_concurrent_jobs: int = Field(
        default=200,
        validation_alias=AliasChoices(
            "CODELOOP_QUOTA_CONCURRENT_JOBS", "CODELOOP_MAX_QUEUED_JOBS_PER_OWNER"
        ),
    )
    quota_tokens_per_day: int = 1_000_000  # generated tokens per key per UTC day
    queue_max_depth: int = 1000  # jobs waiting on one queue (all keys) before 503
    # `user:password` for Flower; Flower itself reads FLOWER_BASIC_AUTH (never argv).
    flower_basic_auth: str = Field(
        default="",
        validation_alias=AliasChoices("CODELOOP_FLOWER_BASIC_AUTH", "FLOWER_BASIC_AUTH"),
    )
    # Signs the short-lived tokens that let an EventSource follow one job's events
    # (it cannot send Authorization). Empty: a random secret per API process.
    events_token_secret: str = ""
    events_token_ttl_s: int = 300

    # --- webhooks (app/core/webhooks.py, workers/webhooks.py) -------------------------
    # HMAC-SHA256 key of `X-Codeloop-Signature`; needed where deliveries run (the
    # maintenance worker). Empty: deliveries fail ("unsigned") rather than go unsigned.
    webhook_secret: str = ""
    # Loopback, private, link-local and reserved targets are refused unless allowed:
    # all of them, or only these comma-separated CIDRs (e.g. "10.0.0.0/8,fd00::/8").
    webhook_allow_private: bool = False
    webhook_allow_cidrs: str = ""
    webhook_timeout_s: float = 5.0  # connect, and each read of the answer
    webhook_max_attempts: int = 6
    webhook_backoff_s: float = 2.0  # the first retry's delay; doubles per attempt
    webhook_backoff_max_s: float = 300.0

    # --- model ----------------------------------------------------------------------
    model_id: str = "auto"
    model_device: Literal["auto", "cuda", "cpu"] = "auto"
    model_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 512
    max_new_tokens_cap: int = 4096
    torch_threads: int = 0  # 0: torch's default
    # Generations decoded together by one generate worker, with a threads pool:
    # "step" (workers/llm/batching.py), "paged" (transformers' continuous batching,
    # workers/llm/paged.py), "auto" (paged on CUDA, step on CPU: what measured best),
    # "off" (one generation at a time, prefork).
    generate_batching: Literal["auto", "step", "paged", "off"] = "auto"
    generate_max_batch: int = 0  # 0: 8 on CPU, 32 on CUDA
    # step: padded cache budget; paged: the paged cache's size. 0: max batch x 2048
    # (paged on CUDA: sized by transformers from free GPU memory).
    generate_cache_tokens: int = 0
    generate_page_size: int = 0  # paged: tokens per cache block (0: 256 on CUDA, 32 on CPU)
    generate_max_batch_tokens: int = 0  # paged: tokens per forward (0: 8192 CUDA, 512 CPU)

    # --- jobs, events ---------------------------------------------------------------
    job_max_attempts: int = 3
    generate_soft_time_limit_s: int = 900
    generate_time_limit_s: int = 960
    execute_soft_time_limit_s: int = 120
    execute_time_limit_s: int = 150
    broker_visibility_timeout_s: int = 3600
    lease_ttl_s: float = 6.0
    result_ttl_s: int = 86_400
    stream_ttl_s: int = 86_400
    stream_maxlen: int = 20_000
    reconcile_interval_s: float = 15.0
    # A waiting job whose message is this old is sent again once its queue has moved
    # past it or holds nothing (workers/reconcile.py): a message lost by the broker.
    redispatch_after_s: float = 30.0
    sse_ping_s: float = 15.0
    sse_send_timeout_s: float = 30.0  # a client that takes no bytes this long is dropped

    # --- sandbox --------------------------------------------------------------------
    executor_backend: Literal["auto", "process", "docker"] = "auto"
    exec_timeout_s: float = 10.0
    exec_timeout_cap_s: float = 60.0
    exec_memory_mb: int = 256
    exec_memory_cap_mb: int = 2048
    exec_output_bytes: int = 1_048_576
    exec_max_code_bytes: int = 262_144
    exec_max_stdin_bytes: int = 1_048_576
    exec_pids_max: int = 128
    exec_cpus: float = 1.0
    exec_tmpfs_mb: int = 64
    exec_nofile: int = 256
    lint_timeout_s: float = 30.0
    lint_memory_mb: int = 768
    # Docker images per runtime family (built by scripts/build-sandbox-images.sh).
    sandbox_image_python: str = "codeloop/sandbox-python:1"
    sandbox_image_node: str = "codeloop/sandbox-node:1"
    sandbox_image_java: str = "codeloop/sandbox-java:1"
    # Pinned npm tools (esbuild, React, ESLint), bound read-only into the sandbox.
    sandbox_tools_dir: Path = Path("/opt/codeloop/sandbox-tools")
    sandbox_cgroup: str = "codeloop-sandbox"
    sandbox_uid_base: int = 1_990_000_000
    sandbox_slots: int = 64

    # --- retrieval ------------------------------------------------------------------
    embedding_model: str = "all-MiniLM-L6-v2"
    retrieval_w_sim: float = 0.7
    retrieval_w_fb: float = 0.2
    retrieval_w_usage: float = 0.1
    retrieval_neutral_feedback: float = 0.5
    # An execution outcome counts as this many ratings (passed 1.0, failed 0.0) in the
    # feedback term: below one user's rating, enough to demote code that failed.
    retrieval_exec_weight: float = 0.5
    max_project_file_bytes: int = 262_144

    # --- agent ----------------------------------------------------------------------
    context_budget_tokens: int = 1500
    agent_max_tool_calls: int = 4
    agent_tool_timeout_s: float = 60.0
    agent_tool_output_chars: int = 4000
    agent_max_repair_rounds: int = 2
    agent_reuse_min_similarity: float = 0.55
    agent_reuse_candidates: int = 3

    # --- tuning ---------------------------------------------------------------------
    # Retriever: an Optuna study over HNSW M / ef_construction / ef (workers/tuning/).
    tune_interval_s: float = 21_600.0  # beat runs the tuner this often
    tune_min_growth: float = 0.1  # skip unless the corpus grew this much since the last study
    tune_min_corpus: int = 200  # beat never tunes a smaller corpus
    tune_n_trials: int = 30
    tune_timeout_s: float = 600.0
    tune_recall_target: float = 0.98
    tune_promote_margin: float = 0.05  # held-out p95 must be this much better to promote
    tune_eval_queries: int = 2000  # evaluation queries per study (half tuning, half held out)
    tune_record_queries: bool = True  # store served query embeddings for the evaluation set
    tune_build_threads: int = 1  # hnswlib threads while the study builds candidate indexes
    tune_soft_time_limit_s: int = 1800
    tune_time_limit_s: int = 1860
    tune_journal: Literal["file", "redis"] = "file"  # Optuna's storage when SQL is not PostgreSQL
    retrieval_config_check_s: float = 5.0  # how often a replica looks for a promoted config
    # Generation: an ask-and-tell study per language over temperature / top_p.
    tune_generation: bool = True
    tune_generation_share: float = 0.2  # share of unpinned generations served a trial
    tune_generation_per_trial: int = 4  # generations served each trial's pair
    tune_generation_min_outcomes: int = 3  # ratings + execution outcomes before a trial is told
    tune_generation_deadline_s: float = 259_200.0  # a trial still short of outcomes then fails
    tune_generation_min_trials: int = 5  # complete trials before the best becomes the default
    tune_generation_interval_s: float = 60.0  # beat tells finished trials this often

    @field_validator("redis_url", "database_url")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _no_placeholder_secrets_beyond_loopback(self) -> Settings:
        exposure = self.exposure
        if exposure is None:
            return self
        policy = secret_policy
        problems = [
            *(policy.machine_secret_problem("CODELOOP_API_KEYS", k) for k in self.env_api_keys),
            *(
                policy.machine_secret_problem(f"CODELOOP_{name.upper()}", value)
                for name, value in (
                    ("events_token_secret", self.events_token_secret),
                    ("webhook_secret", self.webhook_secret),
                )
                if value
            ),
            policy.password_problem(
                "CODELOOP_DATABASE_URL", policy.url_password(self.database_url)
            ),
            policy.password_problem("CODELOOP_REDIS_URL", policy.url_password(self.redis_url)),
            *policy.flower_problems(self.flower_basic_auth),
        ]
        found = list(dict.fromkeys(p for p in problems if p))
        if found:
            raise policy.InsecureSettings(policy.refusal_message(found, exposure))
        return self

    @property
    def exposure(self) -> str | None:
        """Why this process counts as reachable beyond loopback, or None if it is not:
        the API binds beyond it, or Redis is on another host (a deployment)."""
        if not self.api_is_loopback:
            return f"CODELOOP_API_HOST={self.api_host}"
        redis_host = _url_host(self.redis_url)
        if redis_host is not None and not is_loopback_host(redis_host):
            return f"Redis at {redis_host}"
        return None

    @property
    def api_is_loopback(self) -> bool:
        return is_loopback_host(self.api_host)

    @property
    def env_api_keys(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    def sqlite_path(self) -> Path | None:
        """The SQLite file behind `database_url`, or None for other engines."""
        prefix = "sqlite:///"
        if not self.database_url.startswith(prefix):
            return None
        rest = self.database_url[len(prefix) :].split("?", 1)[0]
        return None if rest in ("", ":memory:") else Path(rest)


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(url: str) -> str | None:
    """The host of a URL; None for a unix socket or a URL without one."""
    try:
        return urlsplit(url).hostname or None
    except ValueError:
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings (tests and `codeloop up` change the environment)."""
    get_settings.cache_clear()


__all__ = ["DEFAULT_GPU_MODEL", "Settings", "get_settings", "is_loopback_host"]
