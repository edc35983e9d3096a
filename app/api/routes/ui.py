"""The browser page at `/`: static files shipped inside the package (no CDN, no build).

`/` and its two assets need no key (the page asks for one and keeps it in the browser's
localStorage); every call the page makes goes through the normal, authenticated API.
`/ui/config` says what the page needs before its first call: languages, the configured
model, the model that served the latest generation, whether a key is needed.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import select

from app.api.deps import get_settings
from app.core import names
from app.core.db import session_scope
from app.core.errors import NotFound
from app.core.models import CodeHistory

router = APIRouter(tags=["ui"])

ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# Everything comes from this origin; no inline script, no eval, no frames.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}


def _asset(name: str) -> bytes:
    return resources.files("app.api").joinpath("static", name).read_bytes()


@router.get("/", include_in_schema=False)
def index() -> Response:
    headers = {**_HEADERS, "Cache-Control": "no-cache"}
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=headers)


@router.get("/ui/config", include_in_schema=False)
async def ui_config(request: Request) -> dict[str, Any]:
    settings = get_settings()
    return {
        "languages": list(names.LANGUAGES),
        "model": settings.model_id,
        "served_model": await run_in_threadpool(_latest_model),
        "auth": request.app.state.auth.settings.auth,
    }


_latest: tuple[float, str | None] = (0.0, None)
_LATEST_CACHE_S = 10.0


def _latest_model() -> str | None:
    """The model of the newest generation (cached: page loads must not cost a scan each)."""
    global _latest
    if time.monotonic() - _latest[0] > _LATEST_CACHE_S:
        with session_scope() as session:
            model = session.scalar(
                select(CodeHistory.model).order_by(CodeHistory.created_at.desc()).limit(1)
            )
        _latest = (time.monotonic(), model)
    return _latest[1]


@router.get("/ui/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no asset {name!r}")
    headers = {**_HEADERS, "Cache-Control": "no-cache"}
    return Response(_asset(name), media_type=media_type, headers=headers)
