"""The FastAPI app: `uvicorn app.main:app` (or `codeloop api`).

Holds nothing heavy: a Redis pool, a Celery producer that sends tasks by name, and one
pub/sub connection shared by every SSE client. Never imports `workers` or torch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.deps import AuthGate
from app.api.errors import install_error_handlers
from app.api.event_hub import EventHub
from app.api.limits import BodySizeLimit
from app.api.quotas import Quotas
from app.api.routes import ROUTERS
from app.core.celery_config import make_producer
from app.core.config import get_settings
from app.core.db import migrate, reset_engine
from app.core.redis_clients import connect, connect_async, connect_quick

log = logging.getLogger("codeloop.api")


class InsecureConfiguration(RuntimeError):
    """Serving beyond loopback with auth off."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    if settings.auth == "off" and not settings.api_is_loopback:
        raise InsecureConfiguration(
            f"refusing to serve {settings.api_host} without auth: set CODELOOP_AUTH=auto|on "
            "and create a key with `codeloop keys create`"
        )
    reset_engine()
    if settings.auto_migrate:
        migrate(settings.database_url)
    app.state.auth = AuthGate(settings)
    app.state.quotas = Quotas(settings)
    app.state.redis = connect_async(settings.redis_url, max_connections=200)
    app.state.redis_sync = connect(settings.redis_url)
    app.state.redis_quick = connect_quick(settings.redis_url)
    app.state.celery = make_producer(settings)
    app.state.hub = EventHub(app.state.redis)
    await app.state.hub.start()
    try:
        yield
    finally:
        await app.state.hub.stop()
        await app.state.redis.aclose()
        app.state.redis_sync.close()
        app.state.redis_quick.close()
        app.state.quotas.close()


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="codeloop",
        version="0.1.0",
        description="Self-hosted, feedback-driven code generation. Jobs in, code out.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app


app = create_app()
