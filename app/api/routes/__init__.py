"""Every router of the API, in the order they appear in /docs."""

from fastapi import APIRouter

from app.api.routes import (
    execute,
    feedback,
    generate,
    health,
    history,
    jobs,
    knowledge,
    projects,
    search,
)

ROUTERS: list[APIRouter] = [
    generate.router,
    execute.router,
    search.router,
    feedback.router,
    knowledge.router,
    history.router,
    projects.router,
    jobs.router,
    health.router,
]
