"""The one Celery app every worker, beat and Flower run (`celery -A workers.celery_app`).

Task modules are imported here so every worker knows every task name, so they must
stay light at import time: torch, transformers and the sandbox are imported inside
the tasks and in `worker_process_init`, never at module top.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import Celery
from celery.signals import (
    celeryd_after_setup,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from app.core import db
from app.core.celery_config import celery_config
from app.core.config import get_settings
from beat.schedule import beat_schedule
from workers.broker_transport import TRANSPORT

log = logging.getLogger(__name__)

celery_app = Celery("codeloop")
celery_app.conf.update(celery_config(get_settings()))
celery_app.conf.beat_schedule = beat_schedule(get_settings())
celery_app.conf.include = [
    "workers.tasks.generate",
    "workers.tasks.execute",
    "workers.tasks.search",
    "workers.tasks.maintenance",
    "workers.tasks.tuning",
    "workers.tasks.webhooks",
]
app = celery_app


@worker_init.connect
def _use_survivable_transport(sender: Any, **_kwargs: Any) -> None:
    """A worker's broker connections survive their loss (workers/broker_transport.py).
    Set in workers only: Flower and beat keep plain `redis://` URLs (Flower's broker
    page knows no other scheme), and `rediss://` keeps kombu's own TLS checks."""
    if get_settings().redis_url.startswith("redis://"):
        sender.app.conf.broker_transport = TRANSPORT


# Queues this worker consumes, learnt in the parent before it forks its pool.
CONSUMED_QUEUES: set[str] = set()


@celeryd_after_setup.connect
def _remember_queues(sender: Any, instance: Any, **_kwargs: Any) -> None:
    CONSUMED_QUEUES.update(q.name for q in instance.app.amqp.queues.consume_from.values())
    os.environ["CODELOOP_WORKER_QUEUES"] = ",".join(sorted(CONSUMED_QUEUES))
    # A threads pool (the batching generate worker) forks nothing and sends no
    # worker_process_init: this process is the pool, so it loads the model now, before
    # it reports ready, once for all its task threads.
    if getattr(instance.pool_cls, "__module__", "") == "celery.concurrency.thread":
        _init_process()


@worker_process_init.connect
def _init_process(**_kwargs: Any) -> None:
    """Per pool process: fresh SQL engine and Redis pool; the LLM if we serve `generate`."""
    db.reset_engine()
    from workers import runtime

    runtime.reset_redis()
    queues = set(filter(None, os.environ.get("CODELOOP_WORKER_QUEUES", "").split(",")))
    if "generate" in queues:
        from workers.tasks import generate

        generate.load_engine_once()
    if queues & {"generate", "search"}:  # both hold the embedder and an index replica
        from workers.tasks import search

        search.warm_up()


@worker_process_shutdown.connect
@worker_shutdown.connect  # a threads pool's only process (prefork's parent holds no replica)
def _shutdown_process(**_kwargs: Any) -> None:
    """Stop the batcher (if this process holds one) and save the index replica (if it
    holds one) so the next start loads it."""
    if sys.modules.get("workers.tasks.generate") is not None:
        from workers.tasks import generate

        generate.close_engine()
    if sys.modules.get("workers.retrieval.service") is not None:
        from workers.retrieval import service

        service.reset()
