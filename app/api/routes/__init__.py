"""Every router of the API, in the order they appear in /docs."""

from fastapi import APIRouter

from app.api.openai.router import router as openai_router
from app.api.routes import (
    events_token,
    execute,
    feedback,
    generate,
    generations,
    health,
    history,
    jobs,
    knowledge,
    optimize,
    projects,
    search,
    ui,
)

ROUTERS: list[APIRouter] = [
    generate.router,
    execute.router,
    search.router,
    feedback.router,
    knowledge.router,
    history.router,
    generations.router,
    projects.router,
    jobs.router,
    optimize.router,
    events_token.router,
    health.router,
    ui.router,
    openai_router,
]
